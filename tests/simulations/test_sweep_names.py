"""Multirun job folders (and so TensorBoard run names) come from the swept overrides."""

from __future__ import annotations

from simulations.jobnames import job_dir_name, swept_keys

ARGV = ["-m", "strategy=fd,fedmd", "seed=0,1", "num_rounds=4", "hydra.sweep.dir=/x"]


def test_swept_keys_in_command_line_order():
    assert swept_keys(ARGV) == ["strategy", "seed"]
    assert swept_keys(["seed=range(3)", "model.family=[{name: mlp},{name: cnn}]"]) == ["seed"]
    assert swept_keys(["+strategy.reducer=mean,median"]) == ["strategy.reducer"]


def test_job_named_by_its_swept_overrides_only():
    task = ["seed=1", "strategy=fedmd", "num_rounds=4"]  # Hydra's order
    assert job_dir_name(task, 3, ARGV) == "strategy=fedmd,seed=1"


def test_without_a_swept_key_every_override_names_the_job():
    assert job_dir_name(["num_rounds=4", "+experiment=fd"], 0, ["-m", "num_rounds=4"]) == (
        "num_rounds=4,experiment=fd"
    )
    assert job_dir_name([], 0, ["-m"]) == "0"


def test_names_are_safe_folder_names():
    name = job_dir_name(["dataset.path=/data/my set"], 2, ["dataset.path=/data/a,/data/my set"])
    assert name == "dataset.path=_data_my_set"
    long = job_dir_name(["model.family=[" + "x" * 300 + "]"], 7, ["-m"])
    assert long.startswith("7_") and len(long) <= 120
