"""Checkpoint files, strategy state and resume checks, without a simulation.

The file tests write real files (a full disk is a real ``RLIMIT_FSIZE`` limit in
a child process); the strategy tests fuse real payloads, store the state in a
checkpoint file and load it into a fresh strategy.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, info_for, python_stdout, uploads_for

from fedkd import checkpoint as ckpt_io
from fedkd.config import compose
from fedkd.errors import CheckpointError, ConfigError
from fedkd.knowledge import ClassLogits, PublicLogits
from server import checkpoint
from server.strategies import STRATEGIES
from server.strategies.base import FusionError


# ---------------------------------------------------------------- the file format
def test_a_tree_round_trips_exactly(tmp_path):
    import torch

    tree = {
        "ints": {0: [1, 2], 7: (3, "x")},
        "nan": float("nan"),
        "inf": [float("-inf"), 1.5],
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "payload": PublicLogits(np.array([3, 1]), np.eye(2, dtype=np.float32), "probs"),
        "nested": {"$odd": None, "ok": True},
        "tensor": torch.arange(3, dtype=torch.uint8),
    }
    checkpoint_file = tmp_path / "t.ckpt"
    ckpt_io.save(checkpoint_file, tree)
    back = ckpt_io.load(checkpoint_file)
    assert back["ints"] == {0: [1, 2], 7: (3, "x")}
    assert np.isnan(back["nan"]) and back["inf"] == [float("-inf"), 1.5]
    assert back["array"].dtype == np.int16 and back["array"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert isinstance(back["payload"], PublicLogits) and back["payload"].space == "probs"
    np.testing.assert_array_equal(back["payload"].values, np.eye(2))
    assert back["nested"] == {"$odd": None, "ok": True}
    assert back["tensor"].tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match="cannot store a set"):
        ckpt_io.save(tmp_path / "bad.ckpt", {"x": {1, 2}})
    assert not (tmp_path / "bad.ckpt").exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated (a copy cut short)
        lambda b: b[:200] + bytes(len(b) - 200),  # zeroed
        lambda b: b.replace(b"state.json", b"other.json"),  # member missing
        lambda b: b"",  # empty file
    ],
)
def test_a_damaged_file_is_refused_with_one_line(tmp_path, damage):
    good = tmp_path / "good.ckpt"
    ckpt_io.save(good, {"round": 3, "array": np.ones(1000)})
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(CheckpointError) as err:
        ckpt_io.load(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert bad.exists()  # refused, never deleted


def test_a_flipped_byte_fails_the_crc(tmp_path):
    path = tmp_path / "c.ckpt"
    ckpt_io.save(path, {"array": np.arange(1000, dtype=np.int64)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt_io.load(path)


FULL_DISK = """
import resource, signal, sys
import numpy as np
from fedkd import checkpoint as ckpt_io
from fedkd.errors import CheckpointError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit: EFBIG, no signal
path = sys.argv[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
try:
    ckpt_io.save(path, {"round": 2, "big": np.ones(100_000)})   # 800 kB: does not fit
except OSError as err:
    print("OSError", err.errno)
"""


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "server.ckpt"
    ckpt_io.save(path, {"round": 1, "small": np.ones(10)})
    before = path.read_bytes()
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.stdout.startswith("OSError"), out.stderr
    assert path.read_bytes() == before and ckpt_io.load(path)["round"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["server.ckpt"]  # no temporary file left


def test_the_checkpointer_logs_one_line_and_keeps_the_last_good_round(tmp_path, caplog):
    cfg = compose(["checkpoint.every=1"])
    writer = checkpoint.Checkpointer(tmp_path, cfg)
    assert writer.write(1, {"x": 1}, [0, 1])
    writer.path.unlink()
    writer.path.mkdir()  # the target cannot be replaced: os.replace raises an OSError
    assert not writer.write(2, {"x": 2}, [0, 1])
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith("checkpoint of round 2 not written (")
    assert line.endswith("the last good checkpoint is round 1") and "\n" not in line


def test_a_writer_killed_mid_write_leaves_the_previous_file_and_a_temporary_one(tmp_path):
    path = tmp_path / "server.ckpt"
    ckpt_io.save(path, {"round": 1})
    script = (
        "import os, sys\nfrom fedkd import checkpoint as c\n"
        "def die(f):\n    f.write(b'PK half a zip')\n    f.flush()\n    os._exit(9)\n"
        "c.write_atomic(sys.argv[1], die)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT)
    assert out.returncode == 9
    assert ckpt_io.load(path) == {"round": 1}
    (leftover,) = [p for p in tmp_path.iterdir() if p.name != "server.ckpt"]
    ckpt_io.save(path, {"round": 2})  # the next write cleans up after the killed one
    assert not leftover.exists() and ckpt_io.load(path) == {"round": 2}


# ---------------------------------------------------------------- strategy state
SETTINGS = {
    "fd": ["strategy=fd", "strategy.teacher=loo"],
    "fedmd": ["strategy=fedmd", "strategy.alignment_size=3"],
    "dsfl": ["strategy=dsfl", "strategy.open_size=3"],
    "knfu": ["strategy=knfu"],
    "fedproto": ["strategy=fedproto"],
    "fedavg": ["strategy=fedavg", "model=mlp"],
    "vote": [
        "strategy=vote",
        "strategy.query_size=3",
        "strategy.voting.noise=gnmax",
        "strategy.voting.sigma=2",
        "strategy.voting.threshold=0",
    ],
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_strategy_continues_from_its_saved_state(name, tmp_path):
    first = STRATEGIES.get(name)(info_for(*SETTINGS[name]))
    first.fuse(1, uploads_for(first), {0: 5, 1: 3, 2: 4})
    first.dropped["no_reply"] += 2
    first.excluded[2] = 1
    path = tmp_path / "s.ckpt"
    ckpt_io.save(path, first.state_dict())
    second = STRATEGIES.get(name)(info_for(*SETTINGS[name]))
    second.load_state_dict(ckpt_io.load(path))
    assert second.excluded == {2: 1} and second.dropped == {"no_reply": 2}
    for cid in (0, 1, 2, 7) if name != "fedavg" else (0, 1, 2):
        a, b = first.payload_for(2, cid), second.payload_for(2, cid)
        assert (a is None) == (b is None)
        if a is not None:
            assert a.kind == b.kind and a.meta() == b.meta()
            for key, value in a.to_arrays().items():
                np.testing.assert_array_equal(value, b.to_arrays()[key])
    if name == "vote":
        assert second.voting.epsilon() == pytest.approx(first.voting.epsilon())
        assert first.voting.epsilon() < float("inf")


def test_the_privacy_ledger_and_dropped_clients_survive_a_checkpoint(tmp_path):
    """A resumed run must not forget the epsilon already spent nor who dropped out."""
    overrides = ("strategy=fd", "privacy=gaussian", "privacy.noise_multiplier=1")
    first = STRATEGIES.get("fd")(info_for(*overrides))
    first.privacy.charge([0, 1, 1])
    first.replies.drop(3, 2, "no_reply", "nothing within 5s")
    first.status.stop_reason = "privacy budget epsilon=8 reached before round 4"
    ckpt_io.save(tmp_path / "p.ckpt", first.state_dict())
    second = STRATEGIES.get("fd")(info_for(*overrides))
    assert second.privacy.epsilon(1) == 0
    second.load_state_dict(ckpt_io.load(tmp_path / "p.ckpt"))
    assert dict(second.privacy.rounds) == {0: 1, 1: 2}
    assert second.privacy.epsilon(1) == pytest.approx(first.privacy.epsilon(1))
    assert second.privacy.epsilon(1) > second.privacy.epsilon(0) > 0
    assert second.dropped_clients == {2: {"no_reply": [3]}}
    assert second.status.stop_reason == first.status.stop_reason


def test_feddf_keeps_its_distillation_generator(tmp_path):
    info = info_for("strategy=feddf", "model=mlp", "split.server_val_per_class=2")
    first = STRATEGIES.get("feddf")(info)
    torch_state = first.state_dict()
    ckpt_io.save(tmp_path / "d.ckpt", torch_state)
    expected = first.generator.get_state()  # what the next distillation draws from
    first.generator.manual_seed(123)
    first.load_state_dict(ckpt_io.load(tmp_path / "d.ckpt"))
    assert first.generator.get_state().equal(expected)


def test_fusion_that_produces_nan_is_rolled_back(monkeypatch):
    fd = STRATEGIES.get("fd")(info_for())
    fd.fuse(1, uploads_for(fd), {0: 1, 1: 1, 2: 1})
    kept = fd.global_teacher.logits.copy()

    def broken(server_round, uploads, num_train):  # a fusion bug: NaN in the new knowledge
        fd.global_teacher = ClassLogits(np.full((2, 2), np.nan, np.float32), np.ones(2, int))
        return {}

    monkeypatch.setattr(fd, "fuse", broken)
    assert fd.guard.fuse(2, uploads_for(fd), {0: 1, 1: 1, 2: 1}) == {}
    np.testing.assert_array_equal(fd.global_teacher.logits, kept)
    assert fd.fusion_failures == 1
    with pytest.raises(FusionError):
        STRATEGIES.get("fd").require_finite("teacher", np.array([1.0, np.inf]))


# ---------------------------------------------------------------- resume checks
def test_resume_takes_only_overrides_that_do_not_change_results(tmp_path):
    saved = compose(["strategy=fedmd", "num_rounds=4"])
    (tmp_path / "config.yaml").write_text(json.dumps(saved))  # JSON is YAML
    composed = compose(["strategy=fedmd", "num_rounds=4", "logging.level=quiet"])
    cfg = checkpoint.resume_config(
        composed, ["logging.level=quiet", f"resume={tmp_path}"], tmp_path
    )
    assert cfg["logging"]["level"] == "quiet" and cfg["resume"] == str(tmp_path)
    assert cfg["strategy"] == saved["strategy"]
    same = checkpoint.resume_config(compose(["strategy=fedmd"]), ["strategy=fedmd"], tmp_path)
    assert same["num_rounds"] == 4  # the run's config, not the defaults
    with pytest.raises(ConfigError, match=r"resume: strategy.reducer='median' differs"):
        checkpoint.resume_config(
            compose(["strategy=fedmd", "strategy.reducer=median"]),
            ["strategy.reducer=median"],
            tmp_path,
        )
    with pytest.raises(ConfigError, match="resume: strategy="):
        checkpoint.resume_config(compose(["strategy=fd"]), ["strategy=fd"], tmp_path)
    with pytest.raises(CheckpointError, match="has no config.yaml"):
        checkpoint.resume_config(composed, [], tmp_path / "nowhere")


def test_a_resume_may_shorten_a_straggle_but_not_change_who_straggles(tmp_path):
    """A straggle's length and rounds only delay replies; its clients shape the fault draw."""
    slow = ["faults.slow.clients=[0]", "faults.slow.rounds=[4]", "faults.slow.seconds=500"]
    (tmp_path / "config.yaml").write_text(json.dumps(compose(slow)))
    shorter = ["faults.slow.seconds=0", "faults.slow.rounds=[]"]
    cfg = checkpoint.resume_config(compose([*slow[:1], *shorter]), shorter, tmp_path)
    assert cfg["faults"]["slow"] == {**cfg["faults"]["slow"], "seconds": 0, "rounds": []}
    assert cfg["faults"]["slow"]["clients"] == [0]
    with pytest.raises(ConfigError, match=r"resume: faults.slow.clients=\[1\] differs"):
        checkpoint.resume_config(
            compose(["faults.slow.clients=[1]"]), ["faults.slow.clients=[1]"], tmp_path
        )


def test_a_checkpoint_is_refused_when_the_config_changed_since(tmp_path):
    cfg = compose(["num_rounds=4"])
    writer = checkpoint.Checkpointer(tmp_path, cfg)
    writer.write(2, {"strategy_name": "fd", "strategy": {}, "recorder": {}, "rng": {}}, [])
    assert checkpoint.load_server_checkpoint(tmp_path, cfg)["round"] == 2
    quieter = {**cfg, "logging": {**cfg["logging"], "level": "quiet"}}
    assert checkpoint.load_server_checkpoint(tmp_path, quieter)["round"] == 2
    changed = {**cfg, "seed": 7}
    with pytest.raises(CheckpointError, match=r"resume: seed is 7 in config.yaml but 0 in the"):
        checkpoint.load_server_checkpoint(tmp_path, changed)
    (tmp_path / "summary.json").write_text('{"status": "finished"}')
    with pytest.raises(CheckpointError, match="already finished"):
        checkpoint.load_server_checkpoint(tmp_path, cfg)


def test_resume_needs_a_checkpoint_and_every_client_file(tmp_path):
    cfg = compose([])
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        checkpoint.load_server_checkpoint(tmp_path, cfg)
    writer = checkpoint.Checkpointer(tmp_path, cfg)
    writer.write(5, {"strategy_name": "fd", "strategy": {}, "recorder": {}, "rng": {}}, [0, 1])
    ckpt_io.save(ckpt_io.client_file(writer.clients_folder, 0, 5), {"client": 0})
    with pytest.raises(CheckpointError, match=r"no checkpoint file .*client_1\.r5\.ckpt"):
        checkpoint.load_server_checkpoint(tmp_path, cfg)


def test_rng_states_round_trip(tmp_path):
    import random

    import torch

    state = checkpoint.rng_state()
    ckpt_io.save(tmp_path / "r.ckpt", state)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(ckpt_io.load(tmp_path / "r.ckpt"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_server_without_torch_saves_and_restores_its_rng_without_loading_it(tmp_path):
    """A server whose strategy computes nothing with torch never loads it: its checkpoint's
    RNG holds python's and numpy's states, and restoring them loads no torch either."""
    code = (
        "import random, sys\n"
        "import numpy as np\n"
        "from fedkd import checkpoint as ckpt_io\n"
        "from server import checkpoint\n"
        f"path = {str(tmp_path / 'r.ckpt')!r}\n"
        "ckpt_io.save(path, checkpoint.rng_state())\n"
        "expected = (random.random(), np.random.rand())\n"
        "state = ckpt_io.load(path)\n"
        "checkpoint.set_rng_state(state)\n"
        "print(sorted(state), (random.random(), np.random.rand()) == expected, 'torch' in sys.modules)\n"
    )
    assert python_stdout(code).split() == ["['numpy',", "'python']", "True", "False"]


@pytest.mark.parametrize(
    ("override", "message"),
    [("checkpoint.every=-1", "checkpoint.every must be null"), ("resume=3", "resume must be")],
)
def test_checkpoint_options_are_checked(override, message):
    from server.app import check_options

    with pytest.raises(ConfigError, match=message):
        check_options(compose([override]))


def test_fedka_keeps_its_weights_reference_and_privacy_ledger(tmp_path):
    overrides = [
        "+experiment=fedka_digits_domains",
        "strategy.broadcast=fedavg",
        "strategy.voting.noise=gnmax",
        "strategy.voting.sigma=3",
        "strategy.voting.threshold=0",
    ]
    cfg = compose(overrides)
    from server.app import prepare_run

    info = prepare_run(cfg)
    first = STRATEGIES.get("fedka")(info)
    first.voting.recorder.gnmax(3.0, 40)
    first.reference = {k: v + 1 for k, v in first.weights[first.key].items()}
    ckpt_io.save(tmp_path / "k.ckpt", first.state_dict())
    second = STRATEGIES.get("fedka")(info)
    second.load_state_dict(ckpt_io.load(tmp_path / "k.ckpt"))
    assert second.voting.epsilon() == pytest.approx(first.voting.epsilon())
    assert second.voting.recorder.num_answered == 40
    for key, value in first.payload_for(2, 0).arrays.items():
        np.testing.assert_array_equal(value, second.payload_for(2, 0).arrays[key])


def test_a_checkpoint_some_clients_could_not_save_leaves_no_client_file(tmp_path, monkeypatch):
    """Complete or absent: when one client fails to save, the files the others wrote for
    that round are removed and the last good round's files stay."""
    strategy = STRATEGIES.get("fd")(info_for())
    strategy.node_of = {0: 10, 1: 11, 2: 12}
    strategy.checkpointer = checkpoint.Checkpointer(
        tmp_path, {"checkpoint": {"every": 5}, "server": {"poll_interval": 0.05}}, 5
    )
    folder = strategy.checkpointer.clients_folder
    folder.mkdir(parents=True)
    for cid in (0, 1, 2):
        ckpt_io.save(ckpt_io.client_file(folder, cid, 5), {"client": cid})

    def two_of_three_save(grid, node_of, folder, server_round, keep, timeout, poll):
        for cid in (0, 1):  # client 2 fails
            ckpt_io.save(ckpt_io.client_file(folder, cid, server_round), {"client": cid})
        return "client 2: disk full"

    monkeypatch.setattr(checkpoint, "save_clients", two_of_three_save)
    assert strategy.checkpointer.save(None, strategy, server_round=10, timeout=1) is False
    assert sorted(p.name for p in folder.iterdir()) == [f"client_{c}.r5.ckpt" for c in (0, 1, 2)]
    assert strategy.checkpointer.last_round == 5 and not strategy.checkpointer.path.exists()
