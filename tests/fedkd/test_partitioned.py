"""``dataset=partitioned`` and ``fedkd-export-split`` on files the tests write."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT

from fedkd.config import compose
from fedkd.data import build_federated_data
from fedkd.errors import ConfigError, DataError
from fedkd.schema import check_early


def pfllib_folder(root, sizes=(30, 20), labels=10, flat=True):
    """PFLlib's layout: train/<id>.npz, test/<id>.npz holding a pickled dict data={x, y}."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for cid, n in enumerate(sizes):
            n = n if split == "train" else n // 2
            x = rng.random((n, 64) if flat else (n, 1, 8, 8)).astype(np.float32)
            y = np.arange(n) % labels
            np.savez_compressed(root / split / f"{cid}.npz", data={"x": x, "y": y})
    return root


def partitioned(path, *more):
    return compose(["dataset=partitioned", f"dataset.path={path}", *more])


def test_export_then_read_back_gives_the_identical_split(tmp_path):
    overrides = ["num_clients=3", "partition.alpha=0.3", "seed=4"]
    out = tmp_path / "split"
    result = subprocess.run(
        [sys.executable, "-m", "simulations.export_split", str(out), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "train").iterdir()) == ["0.npz", "1.npz", "2.npz"]
    original = build_federated_data(compose(overrides))
    again = build_federated_data(partitioned(out, *overrides))
    for a, b in zip(original.clients, again.clients, strict=True):
        np.testing.assert_array_equal(a.train.x, b.train.x)
        np.testing.assert_array_equal(a.train.y, b.train.y)
        np.testing.assert_array_equal(a.test.y, b.test.y)
    np.testing.assert_array_equal(original.public_x, again.public_x)  # same source, same seed
    np.testing.assert_array_equal(original.global_test.y, again.global_test.y)


def test_pfllib_files_are_read_per_client(tmp_path):
    folder = pfllib_folder(tmp_path / "pfl")
    cfg = partitioned(folder, "num_clients=2")
    check_early(cfg, [])
    fed = build_federated_data(cfg)
    assert [len(c.train) for c in fed.clients] == [30, 20]
    assert [len(c.test) for c in fed.clients] == [15, 10]
    assert fed.clients[0].train.x.shape[1:] == (1, 8, 8) and fed.num_classes == 10


@pytest.mark.parametrize(
    ("make", "more", "message"),
    [
        (
            lambda p: pfllib_folder(p),
            ["num_clients=3"],
            "holds 2 clients (ids 0..1) in train/; set num_clients=2",
        ),
        (
            lambda p: pfllib_folder(p, labels=12),
            ["num_clients=2"],
            "has labels 0..11 but the run's dataset has 10 classes (0..9)",
        ),
    ],
)
def test_bad_folders_say_what_to_change(tmp_path, make, more, message):
    folder = make(tmp_path / "pfl")
    with pytest.raises(DataError, match=re.escape(message)):
        build_federated_data(partitioned(folder, *more))


def own_formats_folder(root, rng):
    """Client 0 in .csv, client 1 in .parquet, client 2 as image folders (fedkd's formats),
    each with a label column named ``y`` for the tables; returns the arrays written."""
    import pyarrow as pa
    from PIL import Image
    from pyarrow import csv, parquet

    written = {}
    for split, n in (("train", 12), ("test", 6)):
        (root / split).mkdir(parents=True)
        for cid in range(3):
            y = np.arange(n) % 10
            if cid < 2:
                x = rng.integers(0, 17, (n, 64)).astype(np.float32) / 16
                table = pa.table({"y": y, **{f"p{i}": x[:, i] for i in range(64)}})
                if cid == 0:
                    csv.write_csv(table, root / split / "0.csv")
                else:
                    parquet.write_table(table, root / split / "1.parquet")
            else:
                pixels = rng.integers(0, 256, (n, 8, 8)).astype(np.uint8)
                for i, (img, label) in enumerate(zip(pixels, y, strict=True)):
                    (root / split / "2" / str(label)).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(img, mode="L").save(
                        root / split / "2" / str(label) / f"{i}.png"
                    )
                order = np.argsort(y, kind="stable")  # read back class folder by class folder
                x = pixels[order].astype(np.float32).reshape(n, 64) / 255
                y = y[order]
            written[split, cid] = (x.reshape(n, 1, 8, 8), y)
    return written


def test_csv_parquet_and_image_folders_are_read_per_client(tmp_path):
    folder = tmp_path / "own"
    written = own_formats_folder(folder, np.random.default_rng(1))
    cfg = partitioned(folder, "num_clients=3", "dataset.label_column=y")
    check_early(cfg, [])
    fed = build_federated_data(cfg)
    for cid, client in enumerate(fed.clients):
        for split in ("train", "test"):
            x, y = written[split, cid]
            got = getattr(client, split)
            np.testing.assert_allclose(got.x, x, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(got.y, y)


def test_a_bad_client_file_is_named(tmp_path):
    folder = tmp_path / "own"
    own_formats_folder(folder, np.random.default_rng(1))
    with pytest.raises(DataError, match=re.escape("has no label column 'label'; columns: y, p0")):
        build_federated_data(partitioned(folder, "num_clients=3"))  # the tables' column is y
    (folder / "test" / "1.parquet").unlink()
    with pytest.raises(DataError, match=re.escape("test/ has no file for client(s) 1")):
        build_federated_data(partitioned(folder, "num_clients=3", "dataset.label_column=y"))


def test_early_checks_name_the_folder(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path must be the folder"):
        check_early(compose(["dataset=partitioned"]), [])
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match="no test/ folder"):
        check_early(partitioned(tmp_path), [])


@pytest.mark.slow
def test_simulation_runs_a_pfllib_folder(tmp_path, sim_session):
    folder = pfllib_folder(tmp_path / "pfl", sizes=(40, 30))
    run_dir = tmp_path / "run"
    args = ["dataset=partitioned", f"dataset.path={folder}", "num_clients=2", "num_rounds=2"]
    args += ["logging.progress=false", "logging.table=false", f"hydra.run.dir={run_dir}"]
    result = sim_session.run(args)
    assert result.status == 0, result.last_line
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {cid: c["num_train"] for cid, c in summary["clients"].items()} == {"0": 40, "1": 30}
