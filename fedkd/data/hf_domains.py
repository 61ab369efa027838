"""``hf_domains``: several Hugging Face image datasets (MNIST, USPS, SVHN ...) as domains.

The real-data counterpart of ``digits_domains``: ``domains`` maps a domain name to a
path as ``dataset.path`` of ``hf`` takes it (a hub name or a local ``save_to_disk`` or
parquet folder), and each is read with the ``hf`` loader's helpers (``hf.py``). With
``split.target_domain`` and ``partition=domain`` this is FedKA's digit setting
(docs/algorithms.md §2): one source domain per client, one domain held out as the server's
unlabelled target and the transductive test set.

From FedKA: every domain is brought to one shape, 28x28 RGB (gray images repeat
their channel). Ours: ``size`` and ``channels`` are options (``channels: 1`` takes the
ITU-R 601 luminance 0.299 R + 0.587 G + 0.114 B); resizing is bilinear
``torch.nn.functional.interpolate``, antialiased when shrinking; a domain's splits
(train, test, ...) are pooled into its samples, since leave-one-domain-out uses a
source domain only as private data and the target only as public set and test;
``max_samples_per_domain`` caps each pooled domain with a seeded sample keyed by the
domain's name (so it does not depend on the other domains). Pixels are float32 in
[0, 1]. ``domain_names`` is sorted by name, not in config order: the run config
travels between processes as JSON with sorted keys, so only a sorted order is the
same in every process.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedkd.data.hf import class_count, needs_scaling, open_splits, read_labels, read_split
from fedkd.data.registry import DATASETS
from fedkd.data.types import SourceData
from fedkd.errors import ConfigError, DataError

_CAP = 0x4FD0  # RNG stream tag for max_samples_per_domain
_CHUNK = 4096  # images converted per torch call (bounds the float32 copies)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def _domains(cfg: Mapping[str, Any]) -> dict[str, str]:
    value = cfg.get("domains")
    if not isinstance(value, Mapping) or len(value) < 2:
        raise ConfigError(
            "dataset.domains must map at least two domain names to hub names or local folders, "
            f"e.g. {{mnist: /data/mnist, usps: /data/usps}} (got {value!r})"
        )
    for name, path in value.items():
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise ConfigError(
                f"dataset.domains must map names to hub names or local folders (got {name!r}: {path!r})"
            )
    return {name: value[name] for name in sorted(value)}


Options = tuple[tuple[int, int], int, int | None]  # size, channels, max_samples_per_domain


def _options(cfg: Mapping[str, Any]) -> Options:
    size = cfg["size"]
    if (
        isinstance(size, str)
        or not isinstance(size, Sequence)
        or len(size) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)
    ):
        raise ConfigError(f"dataset.size must be [height, width], two ints >= 1 (got {size!r})")
    channels = cfg["channels"]
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ConfigError(f"dataset.channels must be 1 (gray) or 3 (RGB) (got {channels!r})")
    cap = cfg["max_samples_per_domain"]
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ConfigError(f"dataset.max_samples_per_domain must be an int >= 1 (got {cap!r})")
    return (int(size[0]), int(size[1])), int(channels), cap


def _capped(splits: dict[str, Any], cap: int | None, seed: int, name: str) -> dict[str, Any]:
    """``splits`` with at most ``cap`` samples in all (seeded, keyed by ``name``)."""
    sizes = [len(ds) for ds in splits.values()]
    if cap is None or sum(sizes) <= cap:
        return splits
    rng = np.random.default_rng([seed, _CAP, zlib.crc32(name.encode())])
    keep = np.sort(rng.choice(sum(sizes), cap, replace=False))
    starts = np.cumsum([0, *sizes])
    out = {}
    for (s, ds), lo, hi in zip(splits.items(), starts[:-1], starts[1:], strict=True):
        rows = keep[(keep >= lo) & (keep < hi)] - lo
        if len(rows):
            out[s] = ds.select(rows)
    return out


def _convert(raw: np.ndarray, scale: bool, size: tuple[int, int], channels: int) -> np.ndarray:
    """Raw ``[N, C, H, W]`` images -> float32 ``[N, channels, *size]`` in [0, 1]."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = raw.shape
    if c not in (1, 3):
        raise DataError(f"images have {c} channels; need 1 (gray) or 3 (RGB)")
    luma = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    out = np.empty((n, channels, *size), dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        t = torch.from_numpy(raw[lo : lo + _CHUNK].astype(np.float32))
        if scale:
            t = t * np.float32(1.0 / 255.0)
        if c == 1 and channels == 3:
            t = t.expand(-1, 3, -1, -1)
        elif c == 3 and channels == 1:
            t = (t * luma).sum(1, keepdim=True)
        if (h, w) != size:
            shrink = size[0] < h or size[1] < w
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        out[lo : lo + len(t)] = t.clamp(0.0, 1.0).numpy()
    return out


def _load_domain(
    name: str, path: str, cfg: Mapping[str, Any], seed: int, options: Options
) -> tuple[np.ndarray, np.ndarray, int]:
    """One domain's pooled splits: images ``[N, channels, *size]``, labels, class count."""
    size, channels, cap = options
    splits = {s: ds for s, ds in sorted(open_splits(path, cfg.get("cache_dir")).items()) if len(ds)}
    if not splits:
        raise DataError(f"hf dataset '{path}' has no samples")
    # the class count of the whole domain: a capped sample may miss a class
    labels = [read_labels(ds, s, path, cfg.get("label_key")) for s, ds in splits.items()]
    declared = max((n for _, n in labels if n is not None), default=None)
    num_classes = class_count([y for y, _ in labels], declared, path)
    xs, ys = [], []
    for split, ds in _capped(splits, cap, seed, name).items():
        x, y, _ = read_split(ds, split, path, cfg.get("image_key"), cfg.get("label_key"))
        xs.append(x)
        ys.append(y)
    scale = needs_scaling(xs)
    x = np.concatenate([_convert(a, scale, size, channels) for a in xs])
    return x, np.concatenate(ys), num_classes


@DATASETS.register("hf_domains")
def load_hf_domains(cfg: Mapping[str, Any], seed: int) -> SourceData:
    """Params: ``domains`` (name -> path), ``image_key``, ``label_key``,
    ``max_samples_per_domain``, ``size`` ([28, 28]), ``channels`` (3), ``cache_dir``.
    """
    domains = _domains(cfg)
    options = _options(cfg)
    xs, ys, counts = [], [], {}
    for name, path in domains.items():
        try:
            x, y, counts[name] = _load_domain(name, path, cfg, seed, options)
        except DataError as err:
            raise DataError(f"dataset.domains.{name}: {err}") from None
        xs.append(x)
        ys.append(y)
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{n} {k}" for n, k in counts.items())
        raise DataError(
            f"dataset.domains differ in their number of classes ({shown}); "
            "every domain must have the same classes"
        )
    size, channels, _ = options
    return SourceData(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        num_classes=next(iter(counts.values())),
        input_shape=(channels, *size),
        domains=np.concatenate([np.full(len(y), d, np.int64) for d, y in enumerate(ys)]),
        domain_names=tuple(domains),
    )
