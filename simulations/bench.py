"""``fedkd-bench``: how fast and how big, against a sequential reference.

Each workload (``configs/bench/<name>.yaml``: Hydra overrides + targets) runs as
``fedkd-sim`` and as ``python -m simulations.reference`` (the same computation
in one process, client after client, no Flower, no Ray), alternately,
``--repeats`` times each, every run in its own process. Per run we measure the
wall time of the whole command (start-up and shut-down included: that is what a
sweep pays) and the peak resident memory of its whole process tree (the Ray
workers and daemons included), sampled from ``/proc`` every 0.25 s. From the
run's ``summary.json``: the rounds' time, client updates, bytes up and down per
round and the final accuracies. Figures are medians over the repeats.

Derived figures:

- ``ratio``: simulation wall / reference wall (the targets), and the same for
  the rounds alone (``loop ratio``, start-up and shut-down left out);
- ``overhead/client``: per round, the simulation's time beyond a perfect split
  of the reference's work over the simulation's workers, divided by the
  sampled clients: ``(sim round - ref round / workers) / sampled``, medians
  over rounds 2.. (round 1 starts the workers);
- ``encodings`` (``--encodings``): ``digits-fd-20`` once per knowledge
  encoding, bytes per round and accuracy against ``float32``, and the bytes
  FedAvg would move with the same models (every sampled client's model down
  and up: parameters and buffers as float32).

Two workloads measure what a researcher waits for rather than a ratio:

- ``default`` (the ``make run`` config): besides the ratio, ``first round`` = seconds
  from the command to the first round's line in ``run.log`` (``fedkd-sim`` shows it
  then), with the start-up phases (``phase`` lines: config, Ray, libraries, data) kept
  in the report;
- ``sweep-8`` (``kind: sweep``): one Hydra multirun of ``jobs`` short jobs
  (``fedkd-sim -m seed=0,...``), against one of its jobs alone: ``bound`` = 2 x the sum
  of the sweep's jobs' round times (rounds x median round time from round 2 on) + one
  start-up (the single job's wall minus its rounds); ``per job`` = sweep wall / jobs.

    fedkd-bench                                   # every workload, 3 repeats
    fedkd-bench --workloads digits-fd-20 --repeats 1
    fedkd-bench --out outputs/bench/now --table docs/bench.md   # + docs/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from simulations.proctree import stop_tree

PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_EVERY = 0.25  # seconds between memory samples
QUIET = [
    "logging.level=quiet",
    "logging.progress=false",
    "logging.table=false",
    "logging.tensorboard=false",
    "checkpoint.every=0",
]


def bench_dir() -> Path:
    from fedkd.config import config_dir

    return config_dir() / "bench"


WORKLOAD_KEYS = ("description", "overrides", "kind", "jobs", "reference", "targets")


def workload_names() -> list[str]:
    return sorted(p.stem for p in bench_dir().glob("*.yaml"))


@dataclass
class Workload:
    name: str
    description: str
    overrides: list[str]
    targets: dict[str, float]
    reference: bool  # False: a method the sequential reference does not implement
    kind: str  # run: one fedkd-sim run; sweep: a multirun of ``jobs`` seeds
    jobs: int

    @classmethod
    def load(cls, name: str) -> Workload:
        path = bench_dir() / f"{name}.yaml"
        if not path.exists():
            raise SystemExit(
                f"fedkd-bench: error: no workload '{name}' (known: {', '.join(workload_names())})"
            )
        spec = OmegaConf.to_container(OmegaConf.load(path))
        missing = [key for key in WORKLOAD_KEYS if key not in spec]
        if missing:
            raise SystemExit(
                f"fedkd-bench: error: configs/bench/{name}.yaml has no {', '.join(missing)} "
                f"(every workload sets {', '.join(WORKLOAD_KEYS)})"
            )
        return cls(
            name=name,
            description=str(spec["description"]),
            overrides=[str(o) for o in spec["overrides"]],
            targets=dict(spec["targets"] or {}),
            reference=bool(spec["reference"]),
            kind=str(spec["kind"]),
            jobs=int(spec["jobs"]),
        )


# ------------------------------------------------------------------ measuring
def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


@dataclass
class Measured:
    wall_s: float
    peak_rss: int
    returncode: int
    summary: dict[str, Any]
    first_round_s: float | None = None  # command start -> the first round's line in run.log
    phases: list[tuple[float, str]] = field(default_factory=list)  # (s from command, line)


FIRST_ROUND = "first round: round 1 done"


def phase_lines(run_log: Path, started_epoch: float) -> list[tuple[float, str]]:
    """The run's start-up ``phase`` lines, each with its seconds since ``started_epoch``
    (from the log line's own time stamp, so the interpreter's start is counted too)."""
    from datetime import datetime

    out = []
    try:
        text = run_log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if "][fedkd.phase][" not in line:
            continue
        try:
            stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        detail = line.split("] - ", 1)[-1].split("] ", 1)[-1]  # without "[ 3.2 s] "
        out.append((stamp - started_epoch, detail))
    return out


def measure(cmd: list[str], run_dir: Path, log: Path) -> Measured:
    """Run ``cmd`` to its end; wall time, peak tree RSS and the summary it wrote."""
    started = time.perf_counter()
    started_epoch = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        try:
            while proc.poll() is None:
                peak = max(peak, _tree_rss(proc.pid))
                time.sleep(SAMPLE_EVERY)
        finally:
            wall = time.perf_counter() - started
            stop_tree([proc], grace=30)  # whatever it left behind (Ray daemons), by pid
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    phases = phase_lines(run_dir / "run.log", started_epoch)
    first = next((t for t, line in phases if line.startswith(FIRST_ROUND)), None)
    return Measured(wall, peak, proc.returncode, summary, first, phases)


def sim_command(overrides: list[str], run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "simulations.run",
        *overrides,
        *QUIET,
        f"hydra.run.dir={run_dir}",
    ]


def reference_command(overrides: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "simulations.reference", "--out", str(run_dir), *overrides]


# ------------------------------------------------------------------ figures
def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_figures(m: Measured) -> dict[str, Any]:
    s = m.summary
    rounds = s.get("rounds", [])
    updates = s.get("client_updates")
    if updates is None:  # fedkd-sim: clients that reported per round
        updates = sum(int(r.get("num_clients", 0)) for r in rounds)
    final = s.get("final", {})
    traffic = s.get("bytes_per_round", {})
    loop = s.get("rounds_time_s")
    if loop is None:
        times = [r.get("round_time_s") for r in rounds]
        loop = sum(t for t in times if t is not None) if rounds else None
    return {
        "ok": m.returncode == 0 and s.get("status") == "finished",
        "wall_s": m.wall_s,
        "loop_s": loop,
        "rounds": len(rounds),
        "client_updates": updates,
        "peak_rss_mib": m.peak_rss / 2**20,
        "bytes_up": traffic.get("bytes_up"),
        "bytes_down": traffic.get("bytes_down"),
        "global_acc": final.get("global_test_acc", {}).get("last"),
        "local_acc": final.get("local_test_acc", {}).get("last"),
        "round_times": [r.get("round_time_s") for r in rounds],
        "sampled": [int(r.get("num_clients", 0)) for r in rounds],
        "first_round_s": m.first_round_s,
        "phases": [[round(t, 2), line] for t, line in m.phases],
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats that finished."""
    good = [r for r in runs if r["ok"]]
    out: dict[str, Any] = {"repeats": len(runs), "finished": len(good)}
    if not good:
        return out
    for key in ("wall_s", "loop_s", "peak_rss_mib", "bytes_up", "bytes_down", "first_round_s"):
        out[key] = _median([r.get(key) for r in good])
    for key in ("global_acc", "local_acc"):
        out[key] = _median([r[key] for r in good])
    out["rounds"] = good[0]["rounds"]
    out["client_updates"] = good[0]["client_updates"]
    out["rounds_per_s"] = out["rounds"] / out["wall_s"]
    out["updates_per_s"] = out["client_updates"] / out["wall_s"]
    # per round (2..): median over repeats of each round's time
    per_round = [
        _median([r["round_times"][i] for r in good if i < len(r["round_times"])])
        for i in range(1, out["rounds"])
    ]
    out["round_s"] = _median(per_round)
    out["sampled"] = _median([float(n) for n in good[0]["sampled"][1:]]) or None
    return out


def workers(overrides: list[str]) -> int:
    """How many clients the simulation runs at once (Ray CPUs / CPUs per client)."""
    from fedkd.config import compose

    sim = compose(overrides)["simulation"]
    cpus = sim["ray_num_cpus"] or os.cpu_count() or 1
    return max(1, int(cpus // float(sim["num_cpus_per_client"])))


def compare(sim: dict[str, Any], ref: dict[str, Any] | None, num_workers: int) -> dict[str, Any]:
    out: dict[str, Any] = {"workers": num_workers}
    if not ref or "wall_s" not in ref or "wall_s" not in sim:
        return out
    out["ratio"] = sim["wall_s"] / ref["wall_s"]
    if sim.get("loop_s") and ref.get("loop_s"):
        out["loop_ratio"] = sim["loop_s"] / ref["loop_s"]
    if sim.get("round_s") and ref.get("round_s") and sim.get("sampled"):
        extra = sim["round_s"] - ref["round_s"] / num_workers
        out["overhead_ms_per_client"] = 1000 * extra / sim["sampled"]
    for key in ("global_acc", "local_acc"):
        if sim.get(key) is not None and ref.get(key) is not None:
            out[f"{key}_diff"] = sim[key] - ref[key]
    return out


# ------------------------------------------------------------------ running
def load_average() -> float:
    """The 1-minute load average: the conditions a workload's figures were taken under."""
    return round(os.getloadavg()[0], 1)


def _load_text(r: dict[str, Any]) -> str:
    load = r.get("load")
    return "–" if not load else f"{load[0]:.1f} / {load[1]:.1f}"


def bench_workload(
    wl: Workload, repeats: int, out: Path, reference: bool, extra: list[str]
) -> dict[str, Any]:
    if wl.kind == "sweep":
        return bench_sweep(wl, repeats, out, extra)
    overrides = [*wl.overrides, *extra]
    sims, refs = [], []
    load_before = load_average()
    for i in range(repeats):
        kinds = [("sim", sim_command, sims)]
        if reference and wl.reference:
            kinds.append(("ref", reference_command, refs))
        for kind, command, runs in kinds:
            run_dir = out / wl.name / f"{kind}-{i}"
            run_dir.mkdir(parents=True, exist_ok=True)
            m = measure(command(overrides, run_dir), run_dir, run_dir / "console.log")
            fig = run_figures(m)
            runs.append(fig)
            state = "ok" if fig["ok"] else f"FAILED (see {run_dir / 'console.log'})"
            print(
                f"[bench] {wl.name} {kind} {i + 1}/{repeats}: {m.wall_s:.1f}s, "
                f"peak {fig['peak_rss_mib']:.0f} MiB, {state}",
                flush=True,
            )
    sim, ref = combine(sims), combine(refs) if refs else None
    return {
        "workload": wl.name,
        "load": [load_before, load_average()],
        "description": wl.description,
        "overrides": overrides,
        "targets": wl.targets,
        "simulation": sim,
        "reference": ref,
        "comparison": compare(sim, ref, workers(overrides)),
        "runs": {"simulation": sims, "reference": refs},
    }


def sweep_command(overrides: list[str], jobs: int, sweep_dir: Path) -> list[str]:
    seeds = ",".join(str(i) for i in range(jobs))
    return [
        sys.executable,
        "-m",
        "simulations.run",
        "-m",
        *overrides,
        *QUIET,
        f"seed={seeds}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def steady_loop(run: dict[str, Any]) -> float | None:
    """A run's rounds at their steady pace: rounds x the median round time of rounds 2..
    (round 1 also waits for the workers' start-up, which belongs to start-up)."""
    times = [t for t in run.get("round_times", [])[1:] if t is not None]
    if not run.get("ok") or not times:
        return None
    return len(run["round_times"]) * statistics.median(times)


def sweep_figures(sweep: Measured, jobs: list[dict[str, Any]], single: dict[str, Any]) -> dict:
    """One repeat of a sweep workload: the multirun's wall against its jobs' rounds."""
    loops = [loop for j in jobs if (loop := steady_loop(j)) is not None]
    single_loop = steady_loop(single)
    out: dict[str, Any] = {
        "ok": sweep.returncode == 0 and len(loops) == len(jobs) and single["ok"],
        "wall_s": sweep.wall_s,
        "jobs_finished": len(loops),
        "jobs_loop_s": sum(loops),
        "peak_rss_mib": sweep.peak_rss / 2**20,
        "single_wall_s": single["wall_s"],
        "single_loop_s": single_loop,
        "single_first_round_s": single.get("first_round_s"),
    }
    if single_loop is not None:
        startup = single["wall_s"] - single_loop
        out["startup_s"] = startup
        out["ideal_s"] = sum(loops) + startup  # the jobs' rounds back to back + one start-up
        out["bound_s"] = 2 * sum(loops) + startup
    return out


def bench_sweep(wl: Workload, repeats: int, out: Path, extra: list[str]) -> dict[str, Any]:
    """``wl.jobs`` seeds as one multirun, then one of its jobs alone, ``repeats`` times."""
    overrides = [*wl.overrides, *extra]
    runs, load_before = [], load_average()
    for i in range(repeats):
        sweep_dir = out / wl.name / f"sweep-{i}"
        sweep_dir.mkdir(parents=True, exist_ok=True)
        m = measure(
            sweep_command(overrides, wl.jobs, sweep_dir), sweep_dir, sweep_dir / "console.log"
        )
        job_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name != ".hydra")
        jobs = []
        for job_dir in job_dirs:
            file = job_dir / "summary.json"
            summary = json.loads(file.read_text()) if file.exists() else {}
            jobs.append(run_figures(Measured(0.0, 0, 0, summary)))
        jobs += [run_figures(Measured(0.0, 0, 1, {}))] * max(0, wl.jobs - len(jobs))
        single_dir = out / wl.name / f"single-{i}"
        single_dir.mkdir(parents=True, exist_ok=True)
        single = run_figures(
            measure(
                sim_command([*overrides, "seed=0"], single_dir),
                single_dir,
                single_dir / "console.log",
            )
        )
        fig = sweep_figures(m, jobs, single)
        runs.append(fig)
        state = "ok" if fig["ok"] else f"FAILED (see {sweep_dir / 'console.log'})"
        print(
            f"[bench] {wl.name} sweep {i + 1}/{repeats}: {m.wall_s:.1f}s for "
            f"{fig['jobs_finished']}/{wl.jobs} jobs (one alone: {single['wall_s']:.1f}s), {state}",
            flush=True,
        )
    good = [r for r in runs if r["ok"]]
    sweep: dict[str, Any] = {"repeats": len(runs), "finished": len(good), "jobs": wl.jobs}
    keys = ("wall_s", "jobs_loop_s", "peak_rss_mib", "single_wall_s", "single_loop_s",
            "single_first_round_s", "startup_s", "ideal_s", "bound_s")  # fmt: skip
    for key in keys:
        sweep[key] = _median([r.get(key) for r in good]) if good else None
    if good and sweep["bound_s"]:
        sweep["per_job_s"] = sweep["wall_s"] / wl.jobs
        sweep["vs_ideal"] = sweep["wall_s"] / sweep["ideal_s"]
        sweep["vs_separate"] = sweep["wall_s"] / (wl.jobs * sweep["single_wall_s"])
    return {
        "workload": wl.name,
        "kind": "sweep",
        "load": [load_before, load_average()],
        "description": wl.description,
        "overrides": overrides,
        "targets": wl.targets,
        "simulation": sweep,
        "reference": None,
        "comparison": {},
        "runs": {"sweep": runs},
    }


def fedavg_bytes(overrides: list[str]) -> float:
    """Bytes per round FedAvg would move with these models: each sampled client's
    parameters and buffers as float32, down and up."""
    import numpy as np

    from fedkd.client.runtime import client_tensors, data_key
    from fedkd.config import compose
    from fedkd.models import build_model, spec_for_client
    from fedkd.weights import model_to_arrays

    cfg = compose(overrides)
    data = client_tensors(data_key(cfg), 0)
    sizes = []
    for cid in range(int(cfg["num_clients"])):
        spec = spec_for_client(cfg["model"], cid)
        model = build_model(
            spec, data.input_shape, data.num_classes, int(cfg["model"]["feature_dim"])
        )
        sizes.append(sum(np.asarray(a).size * 4 for a in model_to_arrays(model).values()))
    sampled = max(1, round(float(cfg["server"]["fraction_train"]) * len(sizes)))
    return 2 * float(np.mean(sizes)) * sampled


def bench_encodings(
    encodings: list[str], out: Path, repeats: int, extra: list[str], on: str = "digits-fd-20"
) -> dict[str, Any]:
    """Workload ``on`` once per knowledge encoding: bytes per round and accuracy."""
    wl = Workload.load(on)
    rows = {}
    for enc in encodings:
        sub = replace(
            wl,
            name=f"{wl.name}-{enc}",
            overrides=[*wl.overrides, f"knowledge.encoding={enc}"],
            targets={},
            kind="run",
            jobs=0,
        )
        rows[enc] = bench_workload(sub, repeats, out, reference=False, extra=extra)["simulation"]
    return {
        "workload": wl.name,
        "description": wl.description,
        "by_encoding": rows,
        "fedavg_bytes_per_round": fedavg_bytes(wl.overrides),
    }


# ------------------------------------------------------------------ tables
def _fmt(value: Any, spec: str = ".2f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def _target_text(result: dict[str, Any]) -> str:
    targets, cmp, sim = result["targets"], result["comparison"], result["simulation"]
    parts = []
    if "ratio" in targets and "ratio" in cmp:
        met = "met" if cmp["ratio"] <= targets["ratio"] else "not met"
        stretch = targets.get("stretch")
        extra = ""
        if stretch is not None:
            extra = f", stretch {stretch}x {'met' if cmp['ratio'] <= stretch else 'not met'}"
        parts.append(f"≤ {targets['ratio']}x: {met}{extra}")
    if "overhead_ms" in targets and "overhead_ms_per_client" in cmp:
        met = "met" if cmp["overhead_ms_per_client"] < targets["overhead_ms"] else "not met"
        parts.append(f"overhead < {targets['overhead_ms']} ms/client: {met}")
    if "first_round_s" in targets and sim.get("first_round_s") is not None:
        met = "met" if sim["first_round_s"] <= targets["first_round_s"] else "not met"
        parts.append(f"first round ≤ {targets['first_round_s']} s: {met}")
    if "wall_s" in targets and sim.get("wall_s") is not None:
        met = "met" if sim["wall_s"] <= targets["wall_s"] else "not met"
        parts.append(f"wall ≤ {targets['wall_s']} s: {met}")
    if "peak_rss_gib" in targets and "peak_rss_mib" in sim:
        met = "met" if sim["peak_rss_mib"] / 1024 <= targets["peak_rss_gib"] else "not met"
        parts.append(f"< {targets['peak_rss_gib']} GiB: {met}")
    return "; ".join(parts) or "–"


def markdown(results: list[dict[str, Any]], encodings: list[dict[str, Any]], note: str) -> str:
    lines = [
        "| workload | runs | wall (s) | reference (s) | ratio | loop ratio | rounds/s | updates/s "
        "| peak RSS (MiB) | up / down per round (kB) | overhead / client (ms) | global acc sim / ref "
        "| first round (s) | load (start / end) | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    sweeps = [r for r in results if r.get("kind") == "sweep"]
    results = [r for r in results if r.get("kind") != "sweep"]
    for r in results:
        sim, ref, cmp = r["simulation"], r["reference"] or {}, r["comparison"]
        if "wall_s" not in sim:
            lines.append(f"| {r['workload']} | 0/{sim['repeats']} | failed |" + " |" * 12)
            continue
        acc = f"{_fmt(sim.get('global_acc'), '.4f')} / {_fmt(ref.get('global_acc'), '.4f')}"
        traffic = f"{_fmt(sim['bytes_up'] / 1e3, '.1f')} / {_fmt(sim['bytes_down'] / 1e3, '.1f')}"
        lines.append(
            f"| {r['workload']} | {sim['finished']}/{sim['repeats']} | {sim['wall_s']:.1f} "
            f"| {_fmt(ref.get('wall_s'), '.1f')} | {_fmt(cmp.get('ratio'), '.2f', 'x')} "
            f"| {_fmt(cmp.get('loop_ratio'), '.2f', 'x')} | {sim['rounds_per_s']:.2f} "
            f"| {sim['updates_per_s']:.1f} | {sim['peak_rss_mib']:.0f} | {traffic} "
            f"| {_fmt(cmp.get('overhead_ms_per_client'), '.1f')} | {acc} "
            f"| {_fmt(sim.get('first_round_s'), '.1f')} | {_load_text(r)} | {_target_text(r)} |"
        )
    text = ("\n".join(lines) + "\n\n" if results else "") + note + "\n"
    if sweeps:
        text += "\n" + sweep_markdown(sweeps)
    for table in encodings:
        rows = table["by_encoding"]
        base = rows.get("float32", {})
        fedavg = table["fedavg_bytes_per_round"]
        lines = [
            "",
            f"Encodings on `{table['workload']}` ({table.get('description', '')}):",
            "",
            "| encoding | bytes per round (up + down) | vs float32 | vs FedAvg (same models) "
            "| global acc (last) | Δ vs float32 (points) |",
            "|---|---|---|---|---|---|",
        ]
        for enc, row in rows.items():
            if "bytes_up" not in row:
                lines.append(f"| {enc} | failed | | | | |")
                continue
            total = row["bytes_up"] + row["bytes_down"]
            base_total = (base.get("bytes_up") or 0) + (base.get("bytes_down") or 0)
            delta = (
                None
                if base.get("global_acc") is None
                else round(100 * (row["global_acc"] - base["global_acc"]), 2) + 0.0  # no "-0.00"
            )
            lines.append(
                f"| {enc} | {total / 1e3:.1f} kB | "
                f"{_fmt(total / base_total if base_total else None, '.3f', 'x')} | "
                f"{total / fedavg:.4f}x ({fedavg / 1e6:.2f} MB) | {_fmt(row.get('global_acc'), '.4f')} "
                f"| {_fmt(delta, '+.2f')} |"
            )
        text += "\n".join(lines) + "\n"
    return text


def sweep_markdown(sweeps: list[dict[str, Any]]) -> str:
    lines = [
        "| sweep | runs | jobs | wall (s) | per job (s) | jobs' rounds (s) | one job alone (s) "
        "| its start-up (s) | ideal (s) | bound (s) | wall / ideal | wall / separate jobs "
        "| load (start / end) | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sweeps:
        s = r["simulation"]
        if not s.get("wall_s"):
            lines.append(f"| {r['workload']} | 0/{s['repeats']} | failed |" + " |" * 11)
            continue
        met = "met" if s["wall_s"] <= s["bound_s"] else "not met"
        lines.append(
            f"| {r['workload']} | {s['finished']}/{s['repeats']} | {s['jobs']} | {s['wall_s']:.1f} "
            f"| {s['per_job_s']:.1f} | {s['jobs_loop_s']:.1f} | {s['single_wall_s']:.1f} "
            f"| {s['startup_s']:.1f} | {s['ideal_s']:.1f} | {s['bound_s']:.1f} "
            f"| {s['vs_ideal']:.2f}x | {s['vs_separate']:.2f}x | {_load_text(r)} | ≤ bound: {met} |"
        )
    return (
        "\n".join(lines)
        + "\n\nSweep: one `fedkd-sim -m` multirun of the jobs (seeds 0..jobs-1), then seed 0 "
        "alone in its own process. jobs' rounds = the sum over the jobs of rounds x their "
        "median round time from round 2 on (round 1 also waits for the workers); start-up = the lone job's wall minus its rounds; ideal = jobs' rounds + "
        "one start-up; bound = 2 x jobs' rounds + one start-up; wall / separate jobs = the "
        "sweep against jobs x the lone job's wall (what one process per job costs).\n"
    )


def machine_note(repeats: int) -> str:
    import platform

    import torch

    return (
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, Python {platform.python_version()}. Medians of {repeats} "
        "repeats, each run in its own process; wall = the whole command (start-up and "
        "shut-down included); loop = the rounds alone; ratio = simulation / sequential "
        "reference (`simulations/reference.py`: the same computation in one process on one "
        "torch thread); overhead/client = (simulation round − reference round / workers) / "
        "sampled clients; peak RSS = the whole process tree (Ray daemons and workers included); "
        "load = the 1-minute load average before the workload's first run and after its last "
        "(– : not recorded; the 2 cores are quiet below ~1)."
    )


def earlier_report(table: Path | None) -> dict[str, Any]:
    """``--update``: the report beside ``table`` (none yet: empty); unreadable: one-line error."""
    if table is None:
        raise SystemExit("fedkd-bench: error: --update needs --table (the report to update)")
    path = table.with_suffix(".json")
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise SystemExit(
            f"fedkd-bench: error: {path} is not a fedkd-bench report ({err})"
        ) from None
    if not isinstance(report, dict) or not all(
        isinstance(report.get(key), list) for key in ("results", "encodings")
    ):
        raise SystemExit(
            f"fedkd-bench: error: {path} is not a fedkd-bench report (no results/encodings lists)"
        )
    return report


def merged(earlier: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results by workload name: the new ones replace earlier ones; sorted by name."""
    by_name = {r["workload"]: r for r in earlier} | {r["workload"]: r for r in new}
    return [by_name[name] for name in sorted(by_name)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fedkd-bench", description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="*", default=None, help="default: all; no names: none")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=None, help="run folders (default outputs/bench/<time>)"
    )
    parser.add_argument(
        "--table", type=Path, default=None, help="Markdown table; a .json is written beside it"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the sequential reference")
    parser.add_argument(
        "--encodings",
        nargs="*",
        default=None,
        help="also run the --encodings-on workloads once per knowledge encoding (no names: all)",
    )
    parser.add_argument(
        "--encodings-on",
        nargs="+",
        default=["digits-fd-20"],
        metavar="WORKLOAD",
        help="workloads the encodings are measured on (default digits-fd-20)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other workloads' results from the --table's .json (rerun some, one table)",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("fedkd-bench: error: --repeats must be >= 1")
    names = args.workloads if args.workloads is not None else workload_names()
    workloads = [Workload.load(n) for n in names]
    chosen: list[str] = []
    if args.encodings is not None:  # checked before anything runs
        from fedkd.encoding import ENCODINGS

        chosen = args.encodings or ENCODINGS.names()
        unknown = [e for e in chosen if e not in ENCODINGS]
        if unknown:
            raise SystemExit(
                f"fedkd-bench: error: unknown encodings {unknown} (known: {', '.join(ENCODINGS.names())})"
            )
        for name in args.encodings_on:
            Workload.load(name)
    earlier = earlier_report(args.table) if args.update else {}
    out = args.out or Path("outputs/bench") / time.strftime("%Y-%m-%d_%H-%M-%S")
    for wl in workloads:  # a run's log is appended to, and a sweep's folders are counted
        used = out / wl.name
        if used.is_dir() and any(used.iterdir()):
            raise SystemExit(
                f"fedkd-bench: error: {used} already holds runs of an earlier bench; "
                "give --out a new folder (or remove that one)"
            )
    out.mkdir(parents=True, exist_ok=True)
    results = [
        bench_workload(wl, args.repeats, out, not args.no_reference, args.overrides)
        for wl in workloads
    ]
    encodings = [
        bench_encodings(chosen, out, args.repeats, args.overrides, on)
        for on in (args.encodings_on if chosen else [])
    ]
    results = merged(earlier.get("results", []), results)
    encodings = merged(earlier.get("encodings", []), encodings)
    text = markdown(results, encodings, machine_note(args.repeats))
    report = {"results": results, "encodings": encodings, "note": machine_note(args.repeats)}
    table = args.table or out / "bench.md"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text, encoding="utf-8")
    table.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(text)
    print(f"[bench] wrote {table} and {table.with_suffix('.json')}; runs in {out}")


if __name__ == "__main__":
    main()
