"""A client's own data file (fedkd.data.local): good files load, bad ones fail in one line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pyarrow import csv, parquet

from fedkd.data.local import load_local_data, local_client_data
from fedkd.errors import DataError

SHAPE = (1, 8, 8)
TASK = {"num_classes": 10, "input_shape": SHAPE}


def samples(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 64), dtype=np.float32), rng.integers(0, 10, n)


def write_table(path, x, y, label="label", fmt="csv"):
    columns = {f"p{i}": x[:, i] for i in range(x.shape[1])}
    table = pa.table({**columns, label: y})
    if fmt == "csv":
        csv.write_csv(table, path)
    else:
        parquet.write_table(table, path)
    return path


@pytest.mark.parametrize("flat", [True, False])
def test_npz_flat_or_shaped(tmp_path, flat):
    x, y = samples()
    path = tmp_path / "a.npz"
    np.savez(path, x=x if flat else x.reshape(-1, *SHAPE), y=y, num_classes=10)
    data = load_local_data(path, **TASK)
    assert data.x.shape == (40, *SHAPE) and data.x.dtype == np.float32
    np.testing.assert_array_equal(data.y, y)
    np.testing.assert_allclose(data.x.reshape(40, 64), x)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables(tmp_path, fmt):
    x, y = samples()
    path = write_table(tmp_path / f"a.{fmt}", x, y, fmt=fmt)
    data = load_local_data(path, **TASK)
    np.testing.assert_allclose(data.x.reshape(40, 64), x, rtol=1e-6)
    np.testing.assert_array_equal(data.y, y)


def test_table_with_other_label_column(tmp_path):
    x, y = samples()
    path = write_table(tmp_path / "a.csv", x, y, label="digit")
    assert len(load_local_data(path, label_column="digit", **TASK)) == 40


def test_image_folder(tmp_path):
    from PIL import Image

    for label in (0, 3):
        (tmp_path / "img" / str(label)).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((8, 8), 51 * (i + 1), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / str(label) / f"{i}.png")
    data = load_local_data(tmp_path / "img", **TASK)
    assert data.x.shape == (6, *SHAPE)
    assert sorted(data.y.tolist()) == [0, 0, 0, 3, 3, 3]
    assert data.x.max() == pytest.approx(153 / 255)


def test_client_split_is_seeded_and_75_25(tmp_path):
    x, y = samples(n=40)
    path = tmp_path / "a.npz"
    np.savez(path, x=x, y=y)
    kw = dict(test_fraction=0.25, seed=3, client_id=1, **TASK)
    a, b = local_client_data(path, **kw), local_client_data(path, **kw)
    assert (len(a.train), len(a.test)) == (30, 10)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    c = local_client_data(path, **{**kw, "seed": 4})
    assert not np.array_equal(a.test.x, c.test.x)


# ------------------------------------------------------------------ bad files
def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"local data '.*nope\.npz' does not exist"):
        load_local_data(tmp_path / "nope.npz", **TASK)


def test_unknown_suffix(tmp_path):
    (tmp_path / "a.txt").write_text("1,2")
    with pytest.raises(DataError, match=r"must be a \.npz, \.csv or \.parquet file"):
        load_local_data(tmp_path / "a.txt", **TASK)


def test_npz_without_labels(tmp_path):
    np.savez(tmp_path / "a.npz", features=np.zeros((4, 64)))
    with pytest.raises(DataError, match=r"has arrays \[features\]; needs 'x' .* and 'y'"):
        load_local_data(tmp_path / "a.npz", **TASK)


def test_csv_without_label_column(tmp_path):
    x, y = samples()
    path = write_table(tmp_path / "a.csv", x, y, label="target")
    with pytest.raises(DataError, match=r"has no label column 'label'; columns: p0, p1"):
        load_local_data(path, **TASK)


def test_csv_with_text_column(tmp_path):
    (tmp_path / "a.csv").write_text("p0,name,label\n0.1,cat,1\n0.2,dog,2\n")
    with pytest.raises(DataError, match=r"column 'name' is not numeric"):
        load_local_data(tmp_path / "a.csv", **TASK)


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_labels_beyond_the_runs_classes(tmp_path, fmt):
    x, _ = samples()
    y = np.arange(40) % 12
    path = tmp_path / f"a.{fmt}"
    if fmt == "npz":
        np.savez(path, x=x, y=y)
    else:
        write_table(path, x, y, fmt="parquet")
    with pytest.raises(DataError, match=r"has labels 0\.\.11 but the run's dataset has 10 classes"):
        load_local_data(path, **TASK)


def test_declared_class_count_mismatch(tmp_path):
    x, y = samples()
    np.savez(tmp_path / "a.npz", x=x, y=y, num_classes=12)
    with pytest.raises(DataError, match=r"declares num_classes=12 but the run's dataset has 10"):
        load_local_data(tmp_path / "a.npz", **TASK)


def test_npz_shape_mismatch(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 28, 28)), y=np.zeros(4, dtype=int))
    with pytest.raises(
        DataError, match=r"samples have shape \(28, 28\); the run's dataset has input shape"
    ):
        load_local_data(tmp_path / "a.npz", **TASK)


def test_csv_column_count_mismatch(tmp_path):
    x, y = samples()
    path = write_table(tmp_path / "a.csv", x[:, :10], y)
    with pytest.raises(DataError, match=r"samples have shape \(10,\).*\(64 values per sample\)"):
        load_local_data(path, **TASK)


def test_image_folder_with_named_classes(tmp_path):
    (tmp_path / "img" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"named by its class id .*found cat"):
        load_local_data(tmp_path / "img", **TASK)


def test_errors_are_one_line(tmp_path):
    (tmp_path / "a.csv").write_text("not,a\n\x00\x01,csv,at,all\n")
    with pytest.raises(DataError) as err:
        load_local_data(tmp_path / "a.csv", **TASK)
    assert "\n" not in str(err.value)
