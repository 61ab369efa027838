"""hf_domains: several Hugging Face datasets as the domains of one task (files the test writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_data import offline  # noqa: F401  (fixture)

from fedkd.config import compose
from fedkd.data import DATASETS, build_federated_data
from fedkd.data.hf_domains import convert
from fedkd.errors import ConfigError, DataError
from server.app import prepare_run


def write(
    path: Path, mode: str, side: int, classes: int = 3, n: int = 12, fmt: str = "disk"
) -> str:
    import datasets
    from PIL import Image

    rng = np.random.default_rng(side)
    channels = 3 if mode == "RGB" else 1

    def split(count: int) -> Any:
        pixels = rng.integers(0, 256, size=(count, side, side, channels), dtype=np.uint8)
        images = [Image.fromarray(p if channels == 3 else p[..., 0], mode=mode) for p in pixels]
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=classes)}
        )
        labels = [i % classes for i in range(count)]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    dd = datasets.DatasetDict({"train": split(n), "test": split(n // 2)})
    if fmt == "disk":
        dd.save_to_disk(str(path))
    else:
        for name, ds in dd.items():
            ds.to_parquet(str(path / f"{name}-00000.parquet"))
    return str(path)


@pytest.fixture
def three(tmp_path: Path, offline: None) -> dict[str, str]:  # noqa: F811
    return {
        "gray16": write(tmp_path / "a", "L", 16),
        "rgb20": write(tmp_path / "b", "RGB", 20, fmt="parquet"),
        "gray8": write(tmp_path / "c", "L", 8),
    }


def test_domains_share_one_shape_and_keep_their_ids(three):
    cfg = {"name": "hf_domains", "domains": three, "size": [12, 12], "channels": 3}
    src = DATASETS.get("hf_domains")(cfg, 0)
    assert src.input_shape == (3, 12, 12) and src.x.shape == (54, 3, 12, 12)
    assert src.domain_names == ("gray16", "rgb20", "gray8")
    assert np.bincount(src.domains).tolist() == [18, 18, 18]  # train + test pooled
    assert src.x.dtype == np.float32 and 0.0 <= src.x.min() and src.x.max() <= 1.0
    gray = src.x[src.domains == 0]
    np.testing.assert_array_equal(gray[:, 0], gray[:, 1])  # gray repeated to RGB
    assert src.num_classes == 3


def test_channel_conversion_numbers():
    rgb = np.zeros((1, 3, 2, 2), np.float32)
    rgb[0, :, 0, 0] = [1.0, 0.5, 0.0]
    gray = convert(rgb, (1, 2, 2))
    assert gray.shape == (1, 1, 2, 2)
    assert gray[0, 0, 0, 0] == pytest.approx(0.299 + 0.587 * 0.5)
    up = convert(np.full((1, 1, 4, 4), 0.25, np.float32), (3, 8, 8))
    np.testing.assert_allclose(up, 0.25)  # a constant image stays constant when resized


def test_leave_one_domain_out_through_the_federated_split(three):
    cfg = compose(
        [
            "dataset=hf_domains",
            f"dataset.domains={{gray16: {three['gray16']}, rgb20: {three['rgb20']}, gray8: {three['gray8']}}}",
            "dataset.size=[8,8]",
            "partition=domain",
            "num_clients=2",
            "split.target_domain=rgb20",
            "split.local_test_fraction=0.25",
        ]
    )
    fed = build_federated_data(cfg)
    assert fed.target_domain == "rgb20"
    assert len(fed.public_x) == 18 and len(fed.global_test) == 18
    np.testing.assert_array_equal(fed.public_x, fed.global_test.x)
    assert sorted(fed.client_domains) == ["gray16", "gray8"]
    info = prepare_run(
        {
            **cfg,
            "strategy": compose(["strategy=vote"])["strategy"],
            "model": compose(["model=cnn"])["model"],
        }
    )
    assert info.input_shape == (3, 8, 8) and info.num_public == 18


def test_errors_name_the_domain(three, tmp_path):
    load = DATASETS.get("hf_domains")
    with pytest.raises(ConfigError, match="at least two"):
        load({"domains": {"only": three["gray8"]}}, 0)
    with pytest.raises(DataError, match="domain 'gone'"):
        load({"domains": {"gray8": three["gray8"], "gone": str(tmp_path / "missing")}}, 0)
    four = write(tmp_path / "d", "L", 8, classes=4)
    with pytest.raises(DataError, match=r"disagree on the number of classes \(gray8: 3, four: 4\)"):
        load({"domains": {"gray8": three["gray8"], "four": four}}, 0)
    with pytest.raises(ConfigError, match="dataset.channels"):
        load({"domains": three, "channels": 2}, 0)
    with pytest.raises(ConfigError, match="dataset.size"):
        load({"domains": three, "size": [8]}, 0)
