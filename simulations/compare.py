"""``fedkd-compare``: the README's comparison table, produced by the project itself.

Runs each strategy as its own ``fedkd-sim`` process (same data, partition and
seed), reads every run's ``summary.json`` and writes a Markdown table with the
mean local-test and global-test accuracy over clients (best and last round)
and the bytes exchanged per round. With several seeds it reports mean ± std.

    fedkd-compare                                  # the README table
    fedkd-compare --strategies local fd --seeds 0 1 2 --set num_rounds=10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

# strategy -> extra overrides (FedAvg needs one architecture for every client)
DEFAULT_RUNS = {
    "local": [],
    "fd": [],
    "fedmd": [],
    "dsfl": [],
    "fedavg": ["model=mlp"],
}
DEFAULT_SETTING = ["num_clients=20", "partition=dirichlet", "partition.alpha=0.1", "num_rounds=30"]


def run_one(strategy: str, extra: list[str], seed: int, setting: list[str], out: Path) -> dict:
    run_dir = out / f"{strategy}-seed{seed}"
    args = [
        f"strategy={strategy}",
        f"seed={seed}",
        *setting,
        *extra,
        "logging.progress=false",
        "logging.table=false",
    ]
    cmd = [sys.executable, "-m", "simulations.run", *args, f"hydra.run.dir={run_dir}"]
    print(f"[compare] {' '.join(args)}", flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: dict[str, list[dict]], models: dict[str, str]) -> str:
    head = (
        "| strategy | models | local-test best | local-test last | global-test best | global-test last | KB/round (up+down) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name, summaries in results.items():
        final = [s["final"] for s in summaries]
        kb = [s["bytes_per_round"]["total"] / 1024 for s in summaries]
        rows.append(
            f"| {name} | {models[name]} | {fmt([f['local_test_acc']['best'] for f in final])} "
            f"| {fmt([f['local_test_acc']['last'] for f in final])} "
            f"| {fmt([f['global_test_acc']['best'] for f in final])} "
            f"| {fmt([f['global_test_acc']['last'] for f in final])} "
            f"| {fmt(kb, scale=1.0)} |"
        )
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategies", nargs="+", default=list(DEFAULT_RUNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs") / "compare" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"),
    )
    parser.add_argument("--table", type=Path, default=Path("docs") / "comparison.md")
    args = parser.parse_args(argv)

    setting = [*DEFAULT_SETTING, *args.set]
    results: dict[str, list[dict]] = {}
    models: dict[str, str] = {}
    for name in args.strategies:
        extra = DEFAULT_RUNS.get(name, [])
        models[name] = "1 MLP" if "model=mlp" in extra else "3 MLPs (round-robin)"
        results[name] = [run_one(name, extra, seed, setting, args.out) for seed in args.seeds]
    markdown = table(results, models)
    command = "fedkd-compare" + (
        f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0] else ""
    )
    note = (
        f"Setting: digits, `{' '.join(setting)}`, seeds {args.seeds}. Accuracies in % "
        "(mean over clients; best = best round of that mean, last = final round). "
        f"Reproduce with `{command}`.\n"
    )
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(markdown + "\n" + note, encoding="utf-8")
    print(markdown + "\n" + note)
    print(f"[compare] table written to {args.table}; runs in {args.out}")


if __name__ == "__main__":
    main()
