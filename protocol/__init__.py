"""The wire format shared by the ClientApp (`clients/`) and the ServerApp (`server/`).

Both adapters import this package; neither imports the other."""
