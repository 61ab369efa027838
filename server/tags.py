"""TensorBoard tag names: the one table from metric keys to namespaced tags.

Clients' metrics keep one tag per meaning so the per-client runs overlay
(``accuracy/global_test``, ``loss/train``, ``traffic/bytes_up``); the server's
cross-client aggregates get their own names (``accuracy/global_test_mean``,
``accuracy/global_test_std``, ``traffic/bytes_up_total``), so a sum over clients
never shares a chart with one client's value. A metric not in the table gets a
namespace from its name (``NAMESPACE_WORDS``), else ``other/<key>``; so metrics
added later are grouped without an edit here.
"""

from __future__ import annotations

import re

# exact keys (clients' and the server's own)
CLIENT_TAGS = {
    "train_loss": "loss/train",
    "distill_loss": "loss/distill",
    "bytes_up": "traffic/bytes_up",
    "bytes_down": "traffic/bytes_down",
    "num_train": "data/num_train",
    "client_time": "time/client_s",
}
SERVER_TAGS = {
    "bytes_up": "traffic/bytes_up_total",  # sums over the round's clients
    "bytes_down": "traffic/bytes_down_total",
    "num_clients": "clients/reporting",
    "sampled": "clients/sampled",
    "participants": "clients/participants",
    "replies": "clients/replies",
    "rejected": "clients/rejected",
    "rejected_clients": "clients/rejected_clients",
    "round_time_s": "time/round_s",
}
STATISTICS = ("std", "min", "max")  # server rows: <key>_std etc. over the clients
# the first word found in a key names its namespace
NAMESPACE_WORDS = (
    ("bytes", "traffic"),
    ("epsilon", "privacy"),
    ("delta", "privacy"),
    ("noise", "privacy"),
    ("reject", "clients"),
    ("strike", "clients"),
    ("excluded", "clients"),
    ("time", "time"),
    ("teacher", "fusion"),
    ("entropy", "fusion"),
    ("weight", "fusion"),
    ("vote", "fusion"),
    ("consensus", "fusion"),
    ("distill", "distillation"),
)
_SUFFIXES = re.compile(r"_(acc|loss)$")


def _by_name(key: str) -> str:
    """``<namespace>/<key without its namespace word>`` for a key not in the tables."""
    if key.endswith("_acc"):
        return f"accuracy/{key[: -len('_acc')]}"
    if key.endswith("_loss"):
        return f"loss/{key[: -len('_loss')]}"
    words = key.split("_")
    for word, namespace in NAMESPACE_WORDS:
        if any(w.startswith(word) for w in words):
            return f"{namespace}/{key}"
    return f"other/{key}"


def client_tag(key: str) -> str:
    """The tag of a client's metric (the same for every client, so their runs overlay)."""
    if "/" in key:  # already namespaced by whoever produced it
        return key
    return CLIENT_TAGS.get(key) or _by_name(key)


def server_tag(key: str) -> str:
    """The tag of a server-row value: aggregates over clients named as such."""
    if "/" in key:
        return key
    if key in SERVER_TAGS:
        return SERVER_TAGS[key]
    for stat in STATISTICS:
        if key.endswith(f"_{stat}") and _SUFFIXES.search(key[: -len(stat) - 1]):
            return f"{client_tag(key[: -len(stat) - 1])}_{stat}"
    if _SUFFIXES.search(key) and not key.startswith("honest_"):
        return f"{client_tag(key)}_mean"  # the mean over the round's clients
    if key.startswith("honest_") and _SUFFIXES.search(key):
        return f"{client_tag(key[len('honest_') :])}_honest_mean"
    return _by_name(key)


def mapping_tag(key: str, name: str) -> str:
    """A number inside a server-row mapping (``rejected_replies`` by reason)."""
    return f"{server_tag(key)}/{name}"
