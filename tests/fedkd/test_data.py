"""Tests for fedkd.data: real loaders, real flwr-datasets partitioners, no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import default_cfg, filled, section

from fedkd.data import (
    DATASETS,
    PARTITIONERS,
    ArrayDataset,
    FederatedData,
    SourceData,
    build_federated_data,
)
from fedkd.errors import ConfigError, DataError

# ------------------------------------------------------------------ helpers


def run_cfg(dataset: dict[str, Any], partition: dict[str, Any], **over: Any) -> dict[str, Any]:
    """The composed config with these dataset and partition keys (the rest from configs/)."""
    cfg = default_cfg(seed=0, num_clients=10)
    cfg["dataset"], cfg["partition"] = filled("dataset", dataset), filled("partition", partition)
    cfg["split"].update(over.pop("split", {}))
    cfg.update(over)
    return cfg


DIGITS = {"name": "digits"}
SYNTH = {"name": "synthetic", "num_samples": 3000, "num_classes": 5, "num_features": 8}


def entropy_per_client(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    ents = []
    for p in parts:
        counts = np.bincount(labels[p], minlength=num_classes).astype(float)
        q = counts / counts.sum()
        q = q[q > 0]
        ents.append(float(-(q * np.log(q)).sum()))
    return float(np.mean(ents))


def assert_disjoint_valid(parts: list[np.ndarray], n: int) -> np.ndarray:
    flat = np.concatenate(parts)
    assert all(p.dtype == np.int64 for p in parts)
    assert flat.min() >= 0 and flat.max() < n
    assert len(np.unique(flat)) == len(flat), "partitions overlap"
    return flat


def same_federated(a: FederatedData, b: FederatedData) -> bool:
    if len(a.clients) != len(b.clients):
        return False
    arrays_a = [a.public_x, a.global_test.x, a.global_test.y]
    arrays_b = [b.public_x, b.global_test.x, b.global_test.y]
    for ca, cb in zip(a.clients, b.clients, strict=True):
        arrays_a += [ca.train.x, ca.train.y, ca.test.x, ca.test.y]
        arrays_b += [cb.train.x, cb.train.y, cb.test.x, cb.test.y]
    return all(np.array_equal(x, y) for x, y in zip(arrays_a, arrays_b, strict=True))


# ------------------------------------------------------------------ datasets


def test_digits_shapes_dtypes_ranges() -> None:
    src = DATASETS.get("digits")(DIGITS, 0)
    assert isinstance(src, SourceData)
    assert src.x.shape == (1797, 1, 8, 8) and src.x.dtype == np.float32
    assert src.y.shape == (1797,) and src.y.dtype == np.int64
    assert src.x.min() >= 0.0 and src.x.max() <= 1.0 and src.x.max() > 0.9
    assert src.num_classes == 10 and set(np.unique(src.y)) == set(range(10))
    assert src.input_shape == (1, 8, 8) and src.test is None


def test_synthetic_sizes_and_determinism() -> None:
    load = DATASETS.get("synthetic")
    cfg = section("dataset", "synthetic", num_samples=1234, num_classes=7, num_features=5)
    a, b, c = load(cfg, 1), load(cfg, 1), load(cfg, 2)
    assert a.x.shape == (1234, 5) and a.x.dtype == np.float32 and a.y.dtype == np.int64
    assert a.num_classes == 7 and a.input_shape == (5,)
    counts = np.bincount(a.y, minlength=7)
    assert counts.max() - counts.min() <= 1  # exactly balanced
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert abs(float(a.x.mean()) - 0.5) < 0.1 and 0.0 < a.x.std() < 0.3  # roughly [0, 1]
    # dataset.seed overrides the run seed
    assert np.array_equal(load({**cfg, "seed": 5}, 1).x, load({**cfg, "seed": 5}, 2).x)


def test_synthetic_shape_and_test_split() -> None:
    load = DATASETS.get("synthetic")
    src = load(
        section("dataset", "synthetic", num_samples=200, shape=[1, 28, 28], test_samples=50), 0
    )
    assert src.x.shape == (200, 1, 28, 28) and src.input_shape == (1, 28, 28)
    assert src.test is not None and src.test.x.shape == (50, 1, 28, 28)
    assert src.test.y.dtype == np.int64 and len(src.test) == 50
    # asking for a test split does not change the pool
    plain = load(section("dataset", "synthetic", num_samples=200, shape=[1, 28, 28]), 0)
    assert np.array_equal(plain.x, src.x)


def test_synthetic_class_sep_controls_difficulty() -> None:
    def nearest_mean_accuracy(sep: float) -> float:
        src = DATASETS.get("synthetic")(
            section("dataset", "synthetic", num_samples=4000, class_sep=sep), 0
        )
        means = np.stack([src.x[src.y == c].mean(0) for c in range(10)])
        pred = ((src.x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
        return float((pred == src.y).mean())

    assert nearest_mean_accuracy(0.5) < nearest_mean_accuracy(3.0)


def test_synthetic_bad_param() -> None:
    with pytest.raises(ConfigError, match="dataset.num_classes"):
        DATASETS.get("synthetic")(section("dataset", "synthetic", num_classes=1), 0)


# ------------------------------------------------------------------ hf loader


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: env for fresh imports, config flag for an already-imported datasets."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def tiny_dict(mode: str = "L", n_train: int = 12, n_test: int = 6) -> Any:
    """DatasetDict of 8x8 PIL images, 3 classes, with a ClassLabel feature."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1

    def split(n: int) -> Any:
        pixels = rng.integers(0, 256, size=(n, 8, 8, channels), dtype=np.uint8)
        images = [Image.fromarray(p if channels == 3 else p[..., 0], mode=mode) for p in pixels]
        labels = [i % 3 for i in range(n)]
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
        )
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    return datasets.DatasetDict({"train": split(n_train), "test": split(n_test)})


def expected_chw(ds: Any) -> np.ndarray:
    arrays = [np.asarray(img, dtype=np.float32) / 255.0 for img in ds["image"]]
    arrays = [a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0) for a in arrays]
    return np.stack(arrays)


def test_hf_save_to_disk(tmp_path: Path, offline: None) -> None:
    dd = tiny_dict()
    dd.save_to_disk(str(tmp_path / "tiny"))
    src = DATASETS.get("hf")({"name": "hf", "path": str(tmp_path / "tiny")}, 0)
    assert src.x.shape == (12, 1, 8, 8) and src.x.dtype == np.float32
    assert src.input_shape == (1, 8, 8) and src.num_classes == 3
    assert src.test is not None and src.test.x.shape == (6, 1, 8, 8)
    np.testing.assert_allclose(src.x, expected_chw(dd["train"]), atol=1e-6)
    np.testing.assert_array_equal(src.y, np.arange(12) % 3)
    assert src.y.dtype == np.int64 and src.x.min() >= 0.0 and src.x.max() <= 1.0


def test_hf_single_saved_dataset_without_classlabel(tmp_path: Path, offline: None) -> None:
    import datasets

    train = tiny_dict()["train"]
    plain = train.cast_column("label", datasets.Value("int64"))
    plain.save_to_disk(str(tmp_path / "one"))
    src = DATASETS.get("hf")({"name": "hf", "path": str(tmp_path / "one")}, 0)
    assert src.test is None and len(src.y) == 12 and src.num_classes == 3  # max(label) + 1


@pytest.mark.parametrize(
    "layout", [("train-00000.parquet", "test-00000.parquet"), ("train/0.parquet", "test/0.parquet")]
)
def test_hf_parquet(tmp_path: Path, offline: None, layout: tuple[str, str]) -> None:
    dd = tiny_dict()
    root = tmp_path / "pq"
    for split, rel in zip(("train", "test"), layout, strict=True):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        dd[split].to_parquet(str(root / rel))
    cfg = {"name": "hf", "path": str(root), "cache_dir": str(tmp_path / "cache")}
    src = DATASETS.get("hf")(cfg, 0)
    assert src.x.shape == (12, 1, 8, 8) and src.num_classes == 3
    assert src.test is not None and len(src.test) == 6
    np.testing.assert_allclose(src.test.x, expected_chw(dd["test"]), atol=1e-6)


def test_hf_rgb_and_max_samples(tmp_path: Path, offline: None) -> None:
    dd = tiny_dict(mode="RGB", n_train=20)
    dd.save_to_disk(str(tmp_path / "rgb"))
    src = DATASETS.get("hf")({"name": "hf", "path": str(tmp_path / "rgb")}, 0)
    assert src.x.shape == (20, 3, 8, 8) and src.input_shape == (3, 8, 8)
    np.testing.assert_allclose(src.x, expected_chw(dd["train"]), atol=1e-6)
    capped_cfg = {"name": "hf", "path": str(tmp_path / "rgb"), "max_samples": 5}
    capped = DATASETS.get("hf")(capped_cfg, 0)
    assert len(capped.y) == 5 and capped.test is not None and len(capped.test) == 5
    assert np.array_equal(capped.x, DATASETS.get("hf")(capped_cfg, 0).x)


def test_hf_errors(tmp_path: Path, offline: None) -> None:
    load = DATASETS.get("hf")
    with pytest.raises(DataError, match="could not load hf dataset .*nope.* from the hub or disk"):
        load({"name": "hf", "path": str(tmp_path / "nope")}, 0)

    renamed = tiny_dict().rename_columns({"image": "picture", "label": "target"})
    renamed.save_to_disk(str(tmp_path / "renamed"))
    with pytest.raises(DataError, match="no image column.*columns: picture, target") as err:
        load({"name": "hf", "path": str(tmp_path / "renamed")}, 0)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no label column 'label'"):
        load(
            {
                "name": "hf",
                "path": str(tmp_path / "renamed"),
                "image_key": "picture",
                "label_key": "label",
            },
            0,
        )
    ok = load(
        {
            "name": "hf",
            "path": str(tmp_path / "renamed"),
            "image_key": "picture",
            "label_key": "target",
        },
        0,
    )
    assert ok.x.shape == (12, 1, 8, 8)


def test_hf_mixed_shapes(tmp_path: Path, offline: None) -> None:
    import datasets

    gray, rgb = tiny_dict()["train"], tiny_dict(mode="RGB")["train"]
    mixed = datasets.concatenate_datasets([gray, rgb])
    mixed.save_to_disk(str(tmp_path / "mixed"))
    with pytest.raises(DataError, match=r"mixed.*differ in shape.*\(1, 8, 8\).*\(3, 8, 8\)"):
        DATASETS.get("hf")({"name": "hf", "path": str(tmp_path / "mixed")}, 0)


# ------------------------------------------------------------------ partitioners


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return DATASETS.get("digits")(DIGITS, 0).y


@pytest.mark.parametrize("part", [{"name": "iid"}, {"name": "dirichlet", "alpha": 0.5}])
def test_partitions_disjoint_and_complete(labels: np.ndarray, part: dict[str, Any]) -> None:
    parts = PARTITIONERS.get(part["name"])(labels, 7, 0, filled("partition", part))
    assert len(parts) == 7
    flat = assert_disjoint_valid(parts, len(labels))
    assert len(flat) == len(labels)
    if part["name"] == "iid":
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("mode", ["first-deterministic", "deterministic", "random"])
def test_pathological_classes_per_client(labels: np.ndarray, mode: str) -> None:
    cfg = section("partition", "pathological", classes_per_client=2, class_assignment_mode=mode)
    parts = PARTITIONERS.get("pathological")(labels, 8, 0, cfg)
    assert_disjoint_valid(parts, len(labels))
    assert all(1 <= len(np.unique(labels[p])) <= 2 for p in parts)


def test_pathological_bad_classes_per_client(labels: np.ndarray) -> None:
    for k in (0, 11):
        with pytest.raises(ConfigError, match="classes_per_client"):
            PARTITIONERS.get("pathological")(
                labels, 4, 0, section("partition", "pathological", classes_per_client=k)
            )


def test_dirichlet_alpha_controls_skew(labels: np.ndarray) -> None:
    fn = PARTITIONERS.get("dirichlet")
    skewed = entropy_per_client(
        labels, fn(labels, 10, 0, section("partition", "dirichlet", alpha=0.1)), 10
    )
    mild = entropy_per_client(
        labels, fn(labels, 10, 0, section("partition", "dirichlet", alpha=100.0)), 10
    )
    assert skewed < mild - 0.5


@pytest.mark.parametrize(
    "part",
    [
        {"name": "iid"},
        {"name": "dirichlet", "alpha": 0.5},
        {"name": "pathological", "classes_per_client": 3},
    ],
)
def test_partitions_seeded(labels: np.ndarray, part: dict[str, Any]) -> None:
    fn, part = PARTITIONERS.get(part["name"]), filled("partition", part)
    a, b, c = fn(labels, 5, 1, part), fn(labels, 5, 1, part), fn(labels, 5, 2, part)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("alpha", [0, -1.0])
def test_dirichlet_alpha_must_be_positive(labels: np.ndarray, alpha: float) -> None:
    with pytest.raises(ConfigError, match=r"partition.alpha must be > 0"):
        PARTITIONERS.get("dirichlet")(labels, 4, 0, section("partition", "dirichlet", alpha=alpha))


def test_dirichlet_unreachable_min_size_is_data_error(labels: np.ndarray) -> None:
    with pytest.raises(DataError, match="fewer clients or a larger partition.alpha"):
        PARTITIONERS.get("dirichlet")(
            labels[:40], 30, 0, section("partition", "dirichlet", alpha=0.01, min_partition_size=2)
        )


@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used")
def test_fast_assignment_read_matches_load_partition(labels: np.ndarray) -> None:
    """Guards the shortcut in partition._run against flwr-datasets internals changing."""
    from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

    from fedkd.data.partition import _label_table, _run_public

    for name, cfg, cls, kwargs in [
        (
            "dirichlet",
            section("partition", "dirichlet", alpha=0.3),
            DirichletPartitioner,
            {"alpha": 0.3, "min_partition_size": 2},
        ),
        (
            "pathological",
            section("partition", "pathological", classes_per_client=2),
            PathologicalPartitioner,
            {"num_classes_per_partition": 2, "class_assignment_mode": "first-deterministic"},
        ),
    ]:
        fast = PARTITIONERS.get(name)(labels, 6, 3, cfg)
        reference = cls(num_partitions=6, partition_by="label", seed=3, **kwargs)
        reference.dataset = _label_table(labels, 3)
        slow = _run_public(reference, 6)
        assert all(np.array_equal(x, y) for x, y in zip(fast, slow, strict=True))
    from flwr_datasets.partitioner import IidPartitioner

    for n in (6, 7, len(labels) // 3):  # uneven shards: the first ones are one row longer
        fast = PARTITIONERS.get("iid")(labels, n, 3, {})
        reference = IidPartitioner(num_partitions=n)
        reference.dataset = _label_table(labels, 3)
        slow = _run_public(reference, n)
        assert all(np.array_equal(x, y) for x, y in zip(fast, slow, strict=True))


# ------------------------------------------------------------------ build_federated_data


@pytest.fixture(scope="module")
def digits_fd() -> FederatedData:
    return build_federated_data(run_cfg(DIGITS, {"name": "dirichlet", "alpha": 0.5}))


def test_build_global_test_balanced(digits_fd: FederatedData) -> None:
    gt = digits_fd.global_test
    assert isinstance(gt, ArrayDataset) and len(gt) == 300
    assert np.array_equal(np.bincount(gt.y, minlength=10), np.full(10, 30))
    assert digits_fd.num_classes == 10 and digits_fd.input_shape == (1, 8, 8)


def test_build_sizes_and_local_split(digits_fd: FederatedData) -> None:
    n_clients = sum(len(c.train) + len(c.test) for c in digits_fd.clients)
    pool = 1797 - 300
    assert len(digits_fd.public_x) == round(0.15 * pool)
    assert n_clients + len(digits_fd.public_x) == pool
    for c in digits_fd.clients:
        n = len(c.train) + len(c.test)
        assert len(c.train) >= 1 and len(c.test) >= 1
        assert abs(len(c.test) / n - 0.25) <= 1 / n + 1e-9
        assert c.train.x.dtype == np.float32 and c.train.y.dtype == np.int64
        assert c.train.x.shape[1:] == (1, 8, 8)
    total_test = sum(len(c.test) for c in digits_fd.clients)
    assert abs(total_test / n_clients - 0.25) < 0.02


def test_build_public_unlabelled_and_disjoint() -> None:
    cfg = run_cfg(SYNTH, {"name": "iid"}, num_clients=5)
    fd = build_federated_data(cfg)
    assert isinstance(fd.public_x, np.ndarray) and fd.public_x.shape[1:] == (8,)

    def rows(x: np.ndarray) -> set[bytes]:
        return {r.tobytes() for r in x}

    public = rows(fd.public_x)
    private = set().union(*(rows(c.train.x) | rows(c.test.x) for c in fd.clients))
    test = rows(fd.global_test.x)
    assert len(public) == len(fd.public_x)  # continuous data: rows are unique
    assert not public & private and not public & test and not private & test
    assert len(public) + len(private) + len(test) == 3000


def test_build_uses_official_test_split() -> None:
    ds = {**SYNTH, "test_samples": 400}
    fd = build_federated_data(run_cfg(ds, {"name": "iid"}, num_clients=4))
    assert len(fd.global_test) == 5 * 30
    used = len(fd.public_x) + sum(len(c.train) + len(c.test) for c in fd.clients)
    assert used == 3000  # nothing was taken from the pool for the global test


def test_build_deterministic(digits_fd: FederatedData) -> None:
    again = build_federated_data(run_cfg(DIGITS, {"name": "dirichlet", "alpha": 0.5}))
    assert same_federated(digits_fd, again)
    other = build_federated_data(run_cfg(DIGITS, {"name": "dirichlet", "alpha": 0.5}, seed=1))
    assert not same_federated(digits_fd, other)


def test_build_errors() -> None:
    iid = {"name": "iid"}
    small = {"name": "synthetic", "num_samples": 40, "num_classes": 2}
    split = {"global_test_per_class": 5}
    with pytest.raises(DataError, match=r"fewer samples \(26\) than clients \(27\)"):
        build_federated_data(run_cfg(small, iid, num_clients=27, split=split))
    with pytest.raises(
        DataError,
        match="class 0 has 20 samples in the pool; split.global_test_per_class asks for 21",
    ):
        build_federated_data(run_cfg(small, iid, split={"global_test_per_class": 21}))
    with pytest.raises(ConfigError, match="num_clients"):
        build_federated_data(run_cfg(DIGITS, iid, num_clients=0))
    for key in ("public_fraction", "local_test_fraction"):
        for bad in (1.0, -0.1):
            with pytest.raises(ConfigError, match=f"split.{key}"):
                build_federated_data(run_cfg(DIGITS, iid, split={key: bad}))
    with pytest.raises(
        ConfigError,
        match="unknown dataset 'nope'; known: digits, digits_domains, hf, hf_domains, partitioned, synthetic",
    ):
        build_federated_data(run_cfg({"name": "nope"}, iid))
    with pytest.raises(ConfigError, match="unknown partitioner"):
        build_federated_data(run_cfg(DIGITS, {"name": "nope"}))


def test_build_tiny_partition_is_data_error() -> None:
    part = {"name": "dirichlet", "alpha": 0.05, "min_partition_size": 0}
    with pytest.raises(DataError, match=r"partition \d+ has [01] samples; need at least 2"):
        build_federated_data(run_cfg(DIGITS, part, num_clients=40))


def test_digits_are_scikit_learns_load_digits() -> None:
    """fedkd reads sklearn's bundled file itself (no sklearn import); same arrays."""
    from sklearn.datasets import load_digits as sklearn_digits

    from fedkd.data.digits import load_digits

    ours = load_digits({}, 0)
    bunch = sklearn_digits()
    np.testing.assert_array_equal(ours.x.reshape(len(ours.x), -1) * 16.0, bunch.data)
    np.testing.assert_array_equal(ours.y, bunch.target)
    assert ours.x.dtype == np.float32 and ours.x.shape == (1797, 1, 8, 8)


def test_partition_cache_returns_the_same_partitions_and_survives_a_bad_entry(
    tmp_path, monkeypatch
) -> None:
    from fedkd.data import partition_cache

    monkeypatch.setenv("FEDKD_CACHE", str(tmp_path))
    cfg = run_cfg(DIGITS, {"name": "dirichlet", "alpha": 0.5})
    fresh = build_federated_data(cfg)
    entries = list((tmp_path / "partitions").glob("*.npz"))
    assert len(entries) == 1
    again = build_federated_data(cfg)  # from the cache
    for a, b in zip(fresh.clients, again.clients, strict=True):
        np.testing.assert_array_equal(a.train.y, b.train.y)
        np.testing.assert_array_equal(a.test.x, b.test.x)
    entries[0].write_bytes(b"not an npz")  # a damaged entry is rebuilt, not trusted
    rebuilt = build_federated_data(cfg)
    np.testing.assert_array_equal(rebuilt.clients[3].train.y, fresh.clients[3].train.y)
    other = build_federated_data(run_cfg(DIGITS, {"name": "dirichlet", "alpha": 0.3}))
    assert len(list((tmp_path / "partitions").glob("*.npz"))) == 2  # another config, another entry
    assert not np.array_equal(other.clients[0].train.y, fresh.clients[0].train.y)
    monkeypatch.setenv("FEDKD_CACHE", "off")
    assert partition_cache.cache_dir() is None


def test_a_second_process_reads_the_partition_without_importing_flwr_datasets(tmp_path) -> None:
    import os
    import subprocess
    import sys

    code = (
        "import sys; from fedkd.config import compose; "
        "from fedkd.data import build_federated_data; "
        "build_federated_data(compose(['num_clients=7'])); "
        "print('flwr_datasets' in sys.modules)"
    )
    env = {**os.environ, "FEDKD_CACHE": str(tmp_path)}
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        for _ in range(2)
    ]
    assert [r.stdout.strip() for r in runs] == ["True", "False"], [r.stderr for r in runs]
