"""``fedkd-compare``: comparison tables the project produces itself.

Runs every (method, Dirichlet alpha, seed) as its own ``fedkd-sim`` process
with the same data, partition and seed, reads each run's ``summary.json`` and
writes a Markdown table and a CSV with mean ± std over seeds of the mean
local-test and global-test accuracy (best and last round) and the bytes per
round. A run that fails is reported as failed; the others still make the table.

    fedkd-compare                                     # README table (issue 2 setting)
    fedkd-compare --preset fusion                     # methods x alpha {0.1, 0.5, 5} x 3 seeds
    fedkd-compare --preset knfu-claim                 # local vs uniform vs personalised fusion
    fedkd-compare --methods local fd --seeds 0 1 --set num_rounds=10
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

# method label -> overrides (a method is a strategy plus options; FedAvg needs one architecture)
METHODS = {
    "local": ["strategy=local"],
    "fd": ["strategy=fd"],
    "fedmd": ["strategy=fedmd"],
    "dsfl": ["strategy=dsfl"],
    "fedproto": ["strategy=fedproto"],
    "feddf": ["strategy=feddf"],
    "knfu-uniform": ["strategy=knfu", "strategy.beta=0"],
    "knfu": ["strategy=knfu"],
    "fedavg": ["strategy=fedavg", "model=mlp"],
}
PRESETS = {
    # issue 2: the five baselines, digits, 20 clients, Dirichlet 0.1, one seed
    "baselines": {
        "methods": ["local", "fd", "fedmd", "dsfl", "fedavg"],
        "alphas": [0.1],
        "seeds": [0],
        "setting": ["num_clients=20", "num_rounds=30"],
    },
    # issue 3: every method x heterogeneity x 3 seeds on digits
    "fusion": {
        "methods": list(METHODS),
        "alphas": [0.1, 0.5, 5.0],
        "seeds": [0, 1, 2],
        "setting": ["num_clients=20", "num_rounds=20"],
    },
    # KnFu's claim: with large, very heterogeneous local data, local training wins;
    # personalised fusion should beat uniform fusion where clients differ.
    "knfu-claim": {
        "methods": ["local", "knfu-uniform", "knfu"],
        "alphas": [0.1, 5.0],
        "seeds": [0, 1, 2],
        "setting": [
            "num_clients=10",
            "num_rounds=20",
            "dataset=synthetic",
            "dataset.num_samples=30000",
            "dataset.class_sep=0.6",
        ],
    },
}
METRICS = [
    ("local_test_acc", "best"),
    ("local_test_acc", "last"),
    ("global_test_acc", "best"),
    ("global_test_acc", "last"),
]


def run_one(label: str, alpha: float, seed: int, setting: list[str], out: Path) -> dict | None:
    run_dir = out / f"{label}-a{alpha}-s{seed}"
    args = [
        *METHODS[label],
        f"partition.alpha={alpha}",
        f"seed={seed}",
        *setting,
        "logging.progress=false",
        "logging.table=false",
    ]
    cmd = [sys.executable, "-m", "simulations.run", *args, f"hydra.run.dir={run_dir}"]
    print(f"[compare] {label} alpha={alpha} seed={seed}", flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    summary_file = run_dir / "summary.json"
    if result.returncode != 0 or not summary_file.exists():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"[compare]   failed: {tail[0]}", flush=True)
        return None
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    return summary if summary.get("status", "finished") == "finished" else None


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(summaries: list[dict]) -> dict[str, tuple[float, float]]:
    out = {}
    for key, which in METRICS:
        values = [100 * s["final"][key][which] for s in summaries if key in s["final"]]
        out[f"{key}_{which}"] = mean_std(values)
    out["kb_per_round"] = mean_std([s["bytes_per_round"]["total"] / 1024 for s in summaries])
    return out


def fmt(pair: tuple[float, float], seeds: int) -> str:
    mean, std = pair
    if mean != mean:  # NaN: no successful run
        return "failed"
    return f"{mean:.1f}" if seeds == 1 else f"{mean:.1f} ± {std:.1f}"


def write_tables(rows: list[dict], seeds: int, md_path: Path, note: str) -> None:
    columns = [
        "local_test_acc_best",
        "local_test_acc_last",
        "global_test_acc_best",
        "global_test_acc_last",
        "kb_per_round",
    ]
    head = "| method | alpha | runs | local-test best | local-test last | global-test best | global-test last | KB/round |\n"
    head += "|---|---|---|---|---|---|---|---|\n"
    lines = [
        f"| {r['method']} | {r['alpha']:g} | {r['runs']}/{seeds} | "
        + " | ".join(fmt(r[c], seeds) for c in columns)
        + " |"
        for r in rows
    ]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(head + "\n".join(lines) + "\n\n" + note + "\n", encoding="utf-8")
    with md_path.with_suffix(".csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["method", "alpha", "runs", *[f"{c}_{s}" for c in columns for s in ("mean", "std")]]
        )
        for r in rows:
            writer.writerow(
                [r["method"], r["alpha"], r["runs"], *[f"{v:.4f}" for c in columns for v in r[c]]]
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="baselines")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS))
    parser.add_argument("--alphas", nargs="+", type=float)
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument(
        "--out", type=Path, help="folder for the runs (default outputs/compare/<preset>-<time>)"
    )
    parser.add_argument("--table", type=Path, help="Markdown output (a .csv is written beside it)")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    methods = args.methods or preset["methods"]
    alphas = args.alphas or preset["alphas"]
    seeds = args.seeds or preset["seeds"]
    setting = [*preset["setting"], *args.set]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = args.out or Path("outputs") / "compare" / f"{args.preset}-{stamp}"
    table = args.table or Path("docs") / f"comparison-{args.preset}.md"

    rows = []
    for alpha in alphas:
        for label in methods:
            summaries = [
                s for seed in seeds if (s := run_one(label, alpha, seed, setting, out)) is not None
            ]
            rows.append(
                {"method": label, "alpha": alpha, "runs": len(summaries), **aggregate(summaries)}
            )
    dataset = next((s.split("=", 1)[1] for s in setting if s.startswith("dataset=")), "digits")
    note = (
        f"Setting: {dataset}, Dirichlet alpha as listed, `{' '.join(setting)}`, seeds {seeds}. "
        "Accuracies in % (mean over clients; best = best round of that mean, last = final round); "
        "mean ± std over seeds. "
        f"Reproduce with `fedkd-compare --preset {args.preset}`"
        + (f" --set {' '.join(args.set)}" if args.set else "")
        + "."
    )
    write_tables(rows, len(seeds), table, note)
    print(table.read_text(encoding="utf-8"))
    print(f"[compare] wrote {table} and {table.with_suffix('.csv')}; runs in {out}")


if __name__ == "__main__":
    main()
