"""A disk cache of partitions, so worker processes need not import flwr-datasets.

Every process that builds the federated data (the launcher's checks, each Ray
worker, each SuperNode) partitions the private pool. flwr-datasets' package
import alone takes 1-3 s here (it pulls in seaborn, matplotlib and scipy.stats
for its plots), paid again by every worker of every run of a sweep. The
partition is a pure function of (partitioner, its config, seed, number of
clients, the labels and domain ids it splits, the flwr-datasets version), so we
store its index arrays under a hash of exactly those and read them back.

Location: ``$FEDKD_CACHE`` if set (``off`` disables the cache), else
``~/.cache/fedkd``; files are ``partitions/<sha256>.npz`` written atomically
(temporary file + rename). An unreadable entry is rebuilt; a cache directory
that cannot be written is skipped with a debug log line. Ours, not a paper's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("fedkd")
VERSION = 1  # bump when the partition code changes what it returns


def cache_dir() -> Path | None:
    setting = os.environ.get("FEDKD_CACHE")
    if setting is not None and setting.strip().lower() in ("off", "0", "false", "none", ""):
        return None
    return Path(setting).expanduser() if setting else Path.home() / ".cache" / "fedkd"


def _key(name: str, labels: np.ndarray, num_clients: int, seed: int, cfg: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    plain = {}
    for key, value in sorted(cfg.items()):
        if isinstance(value, np.ndarray):
            digest.update(key.encode() + np.ascontiguousarray(value).tobytes())
        else:
            plain[key] = value
    try:
        library = metadata.version("flwr-datasets")
    except metadata.PackageNotFoundError:
        library = "none"
    head = json.dumps(
        [VERSION, name, num_clients, seed, plain, library, str(labels.dtype), len(labels)],
        sort_keys=True,
        default=str,
    )
    digest.update(head.encode())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def cached_partition(
    name: str,
    build: Callable[[], list[np.ndarray]],
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    cfg: Mapping[str, Any],
) -> list[np.ndarray]:
    """``build()``'s partitions, from the cache when this exact partition was made before."""
    root = cache_dir()
    if root is None:
        return build()
    path = root / "partitions" / f"{_key(name, labels, num_clients, seed, cfg)}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                parts = [stored[f"p{i}"] for i in range(int(stored["count"]))]
            if len(parts) == num_clients:
                return parts
        except (OSError, ValueError, KeyError) as err:
            log.debug("partition cache entry %s unreadable (%s); rebuilding", path, err)
    parts = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            np.savez(tmp, count=np.int64(len(parts)), **{f"p{i}": p for i, p in enumerate(parts)})
        os.replace(tmp.name, path)
    except OSError as err:
        log.debug("partition cache not written (%s)", err)
    return parts
