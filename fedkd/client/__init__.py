"""The Flower-free side of a client round: data runtime, training round, faults, attacks.

The ClientApp (`clients/`) adapts these to Flower messages."""
