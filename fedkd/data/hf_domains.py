"""Several Hugging Face digit datasets as the domains of one task (FedKA's Digit-Five).

``dataset=hf_domains dataset.domains={mnist: PATH, usps: PATH, svhn: PATH}``: each domain
is loaded with the ``hf`` loader (hub name, ``save_to_disk`` folder or parquet folder),
its official train and test splits are pooled (a held-out domain is the unlabelled
target and the transductive test set, as in FedKA), and every image is converted to
one shape: ``channels`` (gray -> RGB by repetition, RGB -> gray by ITU-R 601 luminance)
and ``size`` (bilinear, antialiased when shrinking). FedKA converts every domain to
28x28 RGB [CODE], which is the default. With ``partition=domain`` each client holds one
domain; ``split.target_domain=NAME`` holds one out.

Ours: the per-domain cap ``max_samples_per_domain`` (seeded, per split) to keep large
sets such as SVHN manageable; domains must agree on the number of classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.data.hf import load_hf
from fedkd.data.registry import DATASETS
from fedkd.data.types import SourceData
from fedkd.errors import ConfigError, DataError, FedkdError

LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


def _shape(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    size, channels = cfg.get("size", [28, 28]), cfg.get("channels", 3)
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    ):
        raise ConfigError(f"dataset.size must be [height, width] of ints >= 1 (got {size!r})")
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels must be 1 or 3 (got {channels!r})")
    return channels, int(size[0]), int(size[1])


def convert(x: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``[N, C, H, W]`` float images in [0, 1] to ``shape`` = (channels, height, width)."""
    import torch
    import torch.nn.functional as F

    channels, height, width = shape
    if x.shape[1] != channels:
        if channels == 3:
            x = np.repeat(x[:, :1], 3, axis=1)
        else:
            x = np.tensordot(x[:, :3], LUMINANCE, axes=([1], [0]))[:, None]
    if x.shape[2:] != (height, width):
        shrink = height < x.shape[2] or width < x.shape[3]
        x = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
            antialias=shrink,
        ).numpy()
    return np.clip(x, 0.0, 1.0).astype(np.float32)


@DATASETS.register("hf_domains")
def load_hf_domains(cfg: Mapping[str, Any], seed: int) -> SourceData:
    """Params: ``domains`` (name -> path), ``image_key``, ``label_key``,
    ``max_samples_per_domain``, ``size``, ``channels``, ``cache_dir``."""
    domains = cfg.get("domains")
    if not isinstance(domains, Mapping) or len(domains) < 2:
        raise ConfigError(
            "dataset.domains must map at least two domain names to hub names or folders, "
            "e.g. 'dataset.domains={mnist: /data/mnist, usps: /data/usps}'"
        )
    shape = _shape(cfg)
    xs, ys, ids, classes = [], [], [], {}
    for d, (name, path) in enumerate(domains.items()):
        sub = {
            "path": path,
            "image_key": cfg.get("image_key"),
            "label_key": cfg.get("label_key"),
            "max_samples": cfg.get("max_samples_per_domain"),
            "cache_dir": cfg.get("cache_dir"),
        }
        try:
            src = load_hf(sub, seed)
        except FedkdError as err:
            raise type(err)(f"domain '{name}': {err}") from None
        x = src.x if src.test is None else np.concatenate([src.x, src.test.x])  # one shape
        y = src.y if src.test is None else np.concatenate([src.y, src.test.y])
        xs.append(convert(x, shape))
        ys.append(y)
        ids.append(np.full(len(y), d, dtype=np.int64))
        classes[str(name)] = src.num_classes
    if len(set(classes.values())) > 1:
        listed = ", ".join(f"{n}: {c}" for n, c in classes.items())
        raise DataError(f"hf_domains: the domains disagree on the number of classes ({listed})")
    return SourceData(
        x=np.concatenate(xs),
        y=np.concatenate(ys).astype(np.int64),
        num_classes=next(iter(classes.values())),
        input_shape=shape,
        domains=np.concatenate(ids),
        domain_names=tuple(str(n) for n in domains),
    )

