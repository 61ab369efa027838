"""``digits_domains``: scikit-learn's 8x8 digits turned into several seeded domains.

A small, download-free stand-in for multi-domain benchmarks such as Digit-Five
(FedKA, docs/algorithms.md §2): every domain is the same digit task seen through a
different deterministic transform, so a model trained on some domains meets a
covariate shift on the others.

Domains (``DOMAIN_NAMES``, in this order):

- ``original``: the digits as ``digits.py`` loads them (pixels / 16).
- ``rotated``: rotated by ``rotation`` degrees (``scipy.ndimage.rotate``, bilinear,
  same 8x8 frame, zero fill).
- ``inverted``: ``1 - x`` (white background, dark strokes).
- ``noisy``: additive Gaussian noise of std ``noise_std`` (seeded), clipped to [0, 1].
- ``blurred``: Gaussian filter of std ``blur_sigma`` pixels.
- ``scaled``: zoomed by ``scale`` (bilinear), then centre-cropped (``scale > 1``) or
  zero-padded (``scale < 1``) back to 8x8.

**Shares.** With ``disjoint: true`` (the default) the 1797 images are split into one
disjoint share per selected domain by a seeded permutation, stratified by class (every
share has each class within one sample of the others, and sizes differ by at most one),
so no digit image appears in two domains: ~300 images per domain for six domains.
With ``disjoint: false`` every domain is the full set transformed (1797 per domain);
the same underlying image then appears once per domain.

Samples are returned domain by domain in the order of ``domains``; ``SourceData.domains``
holds each sample's index into ``SourceData.domain_names`` (the selected names).
Leave-one-domain-out (``split.target_domain``) and the ``domain`` partitioner
(one source domain per client, round-robin) use these ids; see ``splits.py`` and
``domain_partition.py``.

**Real digit domains**: ``hf_domains`` (``hf_domains.py``) builds the same kind of
``SourceData`` from Hugging Face datasets a user has (MNIST, USPS, SVHN ...), one per
domain, each resized to one shape (FedKA: 28x28 RGB).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedkd.data.digits import load_digits
from fedkd.data.registry import DATASETS
from fedkd.data.types import SourceData
from fedkd.errors import ConfigError

DOMAIN_NAMES: tuple[str, ...] = ("original", "rotated", "inverted", "noisy", "blurred", "scaled")

# RNG stream tags (all derived from the dataset seed)
_SHARES, _NOISE = 0xD05A, 0xD05B


def _number(cfg: Mapping[str, Any], key: str, low: float, high: float) -> float:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"dataset.{key} must be a number in [{low}, {high}] (got {value!r})")
    return float(value)


def _rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.rotate(x, degrees, axes=(1, 2), order=1, reshape=False, mode="constant")


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(x, sigma=(0.0, sigma, sigma), mode="constant")


def _rescale(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom every ``[H, W]`` image by ``factor`` and centre-crop or zero-pad back to H x W."""
    from scipy import ndimage

    n, h, w = x.shape
    z = ndimage.zoom(x, (1.0, factor, factor), order=1, mode="grid-constant", grid_mode=True)
    out = np.zeros_like(x)
    zh, zw = z.shape[1:]
    # crop offsets (zoomed larger) and paste offsets (zoomed smaller), centred
    ch, cw = max((zh - h) // 2, 0), max((zw - w) // 2, 0)
    ph, pw = max((h - zh) // 2, 0), max((w - zw) // 2, 0)
    mh, mw = min(h, zh), min(w, zw)
    out[:, ph : ph + mh, pw : pw + mw] = z[:, ch : ch + mh, cw : cw + mw]
    return out


def _transforms(
    cfg: Mapping[str, Any],
) -> dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]:
    """Name -> ``fn(images [N, H, W] in [0, 1], rng) -> images``; parameters read from cfg."""
    rotation = _number(cfg, "rotation", -180.0, 180.0)
    noise_std = _number(cfg, "noise_std", 0.0, 1.0)
    blur_sigma = _number(cfg, "blur_sigma", 0.0, 4.0)
    scale = _number(cfg, "scale", 0.25, 4.0)
    return {
        "original": lambda x, rng: x,
        "rotated": lambda x, rng: _rotate(x, rotation),
        "inverted": lambda x, rng: 1.0 - x,
        "noisy": lambda x, rng: x + noise_std * rng.standard_normal(x.shape),
        "blurred": lambda x, rng: _blur(x, blur_sigma),
        "scaled": lambda x, rng: _rescale(x, scale),
    }


def _selected(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    value = cfg["domains"]
    if value is None:
        return DOMAIN_NAMES
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigError(
            f"dataset.domains must be a non-empty list of {', '.join(DOMAIN_NAMES)} (got {value!r})"
        )
    names = tuple(value)
    unknown = [n for n in names if n not in DOMAIN_NAMES]
    if unknown:
        raise ConfigError(
            f"dataset.domains has unknown domain {unknown[0]!r}; known: {', '.join(DOMAIN_NAMES)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"dataset.domains lists a domain twice (got {list(names)})")
    return names


def stratified_shares(y: np.ndarray, num_shares: int, seed: int) -> list[np.ndarray]:
    """Split ``range(len(y))`` into ``num_shares`` disjoint, class-stratified, sorted shares.

    A seeded permutation, stably grouped by class, dealt out round-robin: every share
    gets each class within one sample of the others and total sizes differ by <= 1.
    """
    perm = np.random.default_rng([seed, _SHARES]).permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]
    owner = np.arange(len(y)) % num_shares
    return [np.sort(order[owner == s]).astype(np.int64) for s in range(num_shares)]


@DATASETS.register("digits_domains")
def load_digits_domains(cfg: Mapping[str, Any], seed: int) -> SourceData:
    """The 8x8 digits as several transformed domains, ``(N, 1, 8, 8)`` float32 in [0, 1].

    Params (defaults in ``configs/dataset/digits_domains.yaml``): ``domains`` (list;
    null: all of ``DOMAIN_NAMES``), ``seed`` (null: the run seed), ``disjoint``, and the
    transform strengths ``rotation`` (degrees), ``noise_std``, ``blur_sigma``, ``scale``.
    """
    names = _selected(cfg)
    disjoint = cfg["disjoint"]
    if not isinstance(disjoint, bool):
        raise ConfigError(f"dataset.disjoint must be true or false (got {disjoint!r})")
    data_seed = cfg["seed"]
    if data_seed is None:
        data_seed = seed
    if isinstance(data_seed, bool) or not isinstance(data_seed, int) or data_seed < 0:
        raise ConfigError(f"dataset.seed must be an int >= 0 or null (got {data_seed!r})")
    transforms = _transforms(cfg)

    base = load_digits({"name": "digits"}, seed)
    images = base.x[:, 0]  # [N, 8, 8]
    if disjoint:
        shares = stratified_shares(base.y, len(names), data_seed)
    else:
        shares = [np.arange(len(base.y), dtype=np.int64)] * len(names)

    xs, ys, ids = [], [], []
    for d, (name, share) in enumerate(zip(names, shares, strict=True)):
        # the noise stream is keyed by the domain's fixed position, not its selection order
        rng = np.random.default_rng([data_seed, _NOISE, DOMAIN_NAMES.index(name)])
        out = transforms[name](images[share].astype(np.float64), rng)
        xs.append(np.clip(out, 0.0, 1.0).astype(np.float32)[:, None])
        ys.append(base.y[share])
        ids.append(np.full(len(share), d, dtype=np.int64))
    return SourceData(
        x=np.concatenate(xs),
        y=np.concatenate(ys).astype(np.int64),
        num_classes=base.num_classes,
        input_shape=base.input_shape,
        domains=np.concatenate(ids),
        domain_names=names,
    )
