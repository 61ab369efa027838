"""Tests for ``hf_domains`` on three tiny digit-like datasets the test writes (no network).

``usps``: 16x16 gray, ``save_to_disk`` with train/test splits; ``svhn``: 20x20 RGB parquet
folder with train/test files; ``mnist``: 28x28 gray uint8 arrays (column ``img``, plain
int labels), one saved ``Dataset``. 10 classes, one probe image of known colour each.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import default_cfg, section

from fedkd.data import DATASETS, build_federated_data
from fedkd.errors import ConfigError, DataError

GRAY_PROBE = 51  # usps train[0]: uniform gray 51 -> 0.2
RGB_PROBE = (200, 100, 50)  # svhn train[0]: uniform colour
SIZES = {"mnist": 20, "svhn": 30, "usps": 30}  # pooled samples per domain
PROBE = 10  # train[0] follows the 10 test samples: splits are pooled in sorted order


def _image_ds(pixels: np.ndarray, num_classes: int = 10) -> Any:
    """PIL-image Dataset (``L`` for [N, H, W], ``RGB`` for [N, H, W, 3]), labels i % 10."""
    import datasets
    from PIL import Image

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=num_classes)}
    )
    images = [Image.fromarray(p) for p in pixels]
    labels = [i % num_classes for i in range(len(pixels))]
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory, offline: None) -> dict[str, Any]:
    """Writes the three domains (and a 5-class one); returns paths and their raw pixels."""
    import datasets

    root = tmp_path_factory.mktemp("hfd")
    rng = np.random.default_rng(0)
    usps = {
        s: rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
        for s, n in [("train", 20), ("test", 10)]
    }
    usps["train"][0] = GRAY_PROBE
    datasets.DatasetDict({s: _image_ds(p) for s, p in usps.items()}).save_to_disk(
        str(root / "usps")
    )
    svhn = {
        s: rng.integers(0, 256, (n, 20, 20, 3), dtype=np.uint8)
        for s, n in [("train", 20), ("test", 10)]
    }
    svhn["train"][0] = RGB_PROBE
    (root / "svhn").mkdir()
    for s, p in svhn.items():
        _image_ds(p).to_parquet(str(root / "svhn" / f"{s}-00000.parquet"))
    mnist = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    datasets.Dataset.from_dict({"img": mnist, "label": np.arange(20) % 10}).save_to_disk(
        str(root / "mnist")
    )
    _image_ds(rng.integers(0, 256, (10, 16, 16), dtype=np.uint8), num_classes=5).save_to_disk(
        str(root / "five")
    )
    return {
        "paths": {n: str(root / n) for n in ("mnist", "usps", "svhn", "five")},
        "cache": str(root / "cache"),
        # pooled in split order (test, train): raw [N, C, H, W] uint8 and labels
        "usps": np.concatenate([usps["test"], usps["train"]])[:, None],
        "svhn": np.moveaxis(np.concatenate([svhn["test"], svhn["train"]]), -1, 1),
        "mnist": mnist[:, None],
        "labels": {
            "usps": np.r_[np.arange(10), np.arange(20) % 10],
            "svhn": np.r_[np.arange(10), np.arange(20) % 10],
            "mnist": np.arange(20) % 10,
        },
    }


def cfg_for(
    raw: dict[str, Any], names: tuple[str, ...] = ("usps", "svhn", "mnist"), **over: Any
) -> dict[str, Any]:
    """Domains in config order ``names`` (deliberately unsorted)."""
    domains = {n: raw["paths"][n] for n in names}
    return section("dataset", "hf_domains", domains=domains, cache_dir=raw["cache"], **over)


def load(cfg: dict[str, Any], seed: int = 0) -> Any:
    return DATASETS.get("hf_domains")(cfg, seed)


def part(src: Any, name: str) -> np.ndarray:
    return src.x[src.domains == src.domain_names.index(name)]


def test_shapes_range_ids(raw: dict[str, Any]) -> None:
    src = load(cfg_for(raw))
    assert src.domain_names == ("mnist", "svhn", "usps")  # sorted, not config order
    assert src.x.shape == (80, 3, 28, 28) and src.x.dtype == np.float32
    assert src.input_shape == (3, 28, 28) and src.num_classes == 10 and src.test is None
    assert src.x.min() >= 0.0 and src.x.max() <= 1.0 and src.x.max() > 0.9
    assert src.domains.dtype == np.int64 and src.y.dtype == np.int64
    assert list(np.bincount(src.domains)) == [SIZES[n] for n in src.domain_names]
    for d, name in enumerate(src.domain_names):
        assert np.array_equal(src.y[src.domains == d], raw["labels"][name]), name
    # no resize at 28x28: mnist is its pixels / 255, gray repeated into three channels
    mnist = part(src, "mnist")
    np.testing.assert_allclose(mnist, np.repeat(raw["mnist"] / 255.0, 3, axis=1), atol=1e-6)
    gray = load(cfg_for(raw, channels=1, size=[16, 12]))
    assert gray.x.shape == (80, 1, 16, 12) and gray.input_shape == (1, 16, 12)


def test_channel_conversion_numbers(raw: dict[str, Any]) -> None:
    rgb, gray = load(cfg_for(raw)), load(cfg_for(raw, channels=1))
    r, g, b = (v / 255.0 for v in RGB_PROBE)
    # a uniform image stays uniform through the resize
    np.testing.assert_allclose(part(rgb, "usps")[PROBE], 0.2, atol=1e-6)
    np.testing.assert_allclose(part(gray, "usps")[PROBE], 0.2, atol=1e-6)
    svhn_rgb = part(rgb, "svhn")[PROBE]
    np.testing.assert_allclose(svhn_rgb[:, 5, 7], [r, g, b], atol=1e-6)
    np.testing.assert_allclose(
        svhn_rgb, np.broadcast_to([[[r]], [[g]], [[b]]], (3, 28, 28)), atol=1e-6
    )
    luma = 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R 601: 124.2 / 255
    assert luma == pytest.approx(0.48706, abs=1e-5)
    np.testing.assert_allclose(part(gray, "svhn")[PROBE], luma, atol=1e-6)


def test_resize_bilinear_antialias_when_shrinking(raw: dict[str, Any]) -> None:
    same = load(cfg_for(raw, size=[20, 20]))  # svhn needs no resize at 20x20
    np.testing.assert_allclose(part(same, "svhn"), raw["svhn"] / 255.0, atol=1e-6)
    up = torch.from_numpy(raw["usps"] / 255.0).float().expand(-1, 3, -1, -1)
    want_up = F.interpolate(up, size=(20, 20), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(part(same, "usps"), want_up.numpy(), atol=1e-5)
    small = load(cfg_for(raw, size=[10, 10]))
    down = torch.from_numpy(raw["svhn"] / 255.0).float()
    want = F.interpolate(down, size=(10, 10), mode="bilinear", align_corners=False, antialias=True)
    plain = F.interpolate(down, size=(10, 10), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(part(small, "svhn"), want.numpy(), atol=1e-5)
    assert np.abs(part(small, "svhn") - plain.numpy()).max() > 0.05  # antialiasing did act


def test_max_samples_per_domain(raw: dict[str, Any]) -> None:
    capped = load(cfg_for(raw, max_samples_per_domain=7))
    assert list(np.bincount(capped.domains)) == [7, 7, 7]
    assert np.array_equal(capped.x, load(cfg_for(raw, max_samples_per_domain=7)).x)
    assert not np.array_equal(capped.y, load(cfg_for(raw, max_samples_per_domain=7), seed=1).y)
    # a domain's sample does not depend on the other domains
    pair = load(cfg_for(raw, ("usps", "mnist"), max_samples_per_domain=7))
    assert np.array_equal(part(pair, "usps"), part(capped, "usps"))
    full = load(cfg_for(raw))  # every capped image is one of the domain's images
    rows = {r.tobytes() for r in part(full, "svhn")}
    assert all(r.tobytes() in rows for r in part(capped, "svhn"))


def test_leave_one_domain_out(raw: dict[str, Any]) -> None:
    src = load(cfg_for(raw))
    cfg = default_cfg("dataset=hf_domains", "partition=domain", seed=0, num_clients=2)
    cfg["dataset"] = cfg_for(raw)
    cfg["split"]["target_domain"] = "usps"
    fd = build_federated_data(cfg)
    target = src.domains == src.domain_names.index("usps")
    assert fd.target_domain == "usps" and fd.input_shape == (3, 28, 28)
    assert np.array_equal(fd.public_x, src.x[target])
    assert np.array_equal(fd.global_test.x, src.x[target])
    assert np.array_equal(fd.global_test.y, src.y[target])
    assert fd.client_domains == ["mnist", "svhn"]
    for client, name in zip(fd.clients, fd.client_domains, strict=True):
        mine = {r.tobytes() for r in part(src, name)}
        held = np.concatenate([client.train.x, client.test.x])
        assert len(held) == SIZES[name] and all(r.tobytes() in mine for r in held)


@pytest.mark.parametrize("preset", ["fedka_digits_domains", "vote_digits_domains"])
def test_presets_with_command_line_domains(raw: dict[str, Any], preset: str) -> None:
    from fedkd.config import compose
    from server.app import prepare_run

    p = raw["paths"]
    overrides = [
        f"+experiment={preset}",
        "dataset=hf_domains",
        f"dataset.domains={{mnist: {p['mnist']}, usps: {p['usps']}, svhn: {p['svhn']}}}",
        f"dataset.cache_dir={raw['cache']}",
        "split.target_domain=svhn",
    ]
    cfg = compose(overrides)
    assert cfg["dataset"]["domains"] == {n: p[n] for n in ("mnist", "usps", "svhn")}
    info = prepare_run(cfg)
    assert info.input_shape == (3, 28, 28) and info.num_public == SIZES["svhn"]
    assert compose(["dataset=hf_domains"])["split"]["target_domain"] is None


def test_errors(raw: dict[str, Any], tmp_path: Path) -> None:
    p = raw["paths"]
    for bad in (None, {}, {"usps": p["usps"]}, [p["usps"], p["svhn"]]):
        with pytest.raises(ConfigError, match="dataset.domains must map at least two domain names"):
            load(section("dataset", "hf_domains", domains=bad))
    with pytest.raises(ConfigError, match="dataset.domains must map names to .*'svhn': 3"):
        load(section("dataset", "hf_domains", domains={"usps": p["usps"], "svhn": 3}))
    for size in ([28], [0, 28], "28", [28.0, 28], [True, 28]):
        with pytest.raises(ConfigError, match=r"dataset.size must be \[height, width\]"):
            load(cfg_for(raw, size=size))
    for channels in (2, True, "3"):
        with pytest.raises(ConfigError, match="dataset.channels must be 1 .* or 3"):
            load(cfg_for(raw, channels=channels))
    with pytest.raises(ConfigError, match="dataset.max_samples_per_domain must be an int >= 1"):
        load(cfg_for(raw, max_samples_per_domain=0))
    nope = str(tmp_path / "nope")
    with pytest.raises(
        DataError, match=f"dataset.domains.usps: could not load hf dataset '{nope}'"
    ) as err:
        load(section("dataset", "hf_domains", domains={"mnist": p["mnist"], "usps": nope}))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="dataset.domains.svhn: .*no image column 'picture'"):
        load(cfg_for(raw, ("svhn", "usps"), image_key="picture"))
    with pytest.raises(
        DataError, match=r"dataset.domains differ in their number of classes \(five 5, usps 10\)"
    ):
        load(cfg_for(raw, ("usps", "five")))
