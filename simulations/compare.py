"""``fedkd-compare``: comparison tables the project produces itself.

Runs every (method, axis value, seed) as its own ``fedkd-sim`` run with the
same data, partition and seed, one after the other in one child process that keeps
one Ray session and its warm workers (``simulations/runner.py``); the axis is the Dirichlet alpha, or the held-out
target domain for the ``domains`` preset, the share of attacking clients for
``attacks``. Reads each run's ``summary.json`` and
writes a Markdown table and a CSV with mean ± std over seeds: the mean local-test
and global-test accuracy (last round) and the bytes per round, or for
domain shift the target accuracy, voting accuracy and group effect. A run that
fails is reported as failed; the others still make the table.

    fedkd-compare                                     # the baselines table (docs/results.md)
    fedkd-compare --preset fusion                     # methods x alpha {0.1, 0.5, 5} x 3 seeds
    fedkd-compare --preset distill                    # digits, 10 clients: transfer + health
    fedkd-compare --preset claims                     # the papers' claims, larger synthetic task
    fedkd-compare --preset knfu-claim                 # local vs uniform vs personalised fusion
    fedkd-compare --preset domains                    # leave-one-domain-out: FedKA, ablations, vote
    fedkd-compare --preset attacks                    # mean/median/trimmed/gated fusion vs attackers
    fedkd-compare --methods local fd --seeds 0 1 --set num_rounds=10
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from simulations import tables
from simulations.runner import Runner

# method label -> overrides (a method is a strategy plus options; FedAvg needs one architecture)
FEDKA = ["strategy=fedka", "+experiment=fedka_digits_domains"]
METHODS = {
    "local": ["strategy=local"],
    "fd": ["strategy=fd"],
    "fedmd": ["strategy=fedmd"],
    "dsfl": ["strategy=dsfl"],
    "fedproto": ["strategy=fedproto"],
    "feddf": ["strategy=feddf"],
    "dsfl-sa": ["strategy=dsfl", "strategy.aggregation=sa"],  # simple averaging, no ERA
    "knfu-uniform": ["strategy=knfu", "strategy.beta=0"],
    "knfu": ["strategy=knfu"],
    "fedavg": ["strategy=fedavg", "model=mlp"],
    "fedproto-weighted": ["strategy=fedproto", "strategy.weighted=true"],
    # the same without the magnitude bounds (what the hostile preset's defences are worth)
    "fedproto-weighted-unbounded": [
        "strategy=fedproto",
        "strategy.weighted=true",
        "bounds.prototypes=null",
    ],
    "fedavg-unbounded": ["strategy=fedavg", "model=mlp", "bounds.weights=null"],
    # leave-one-domain-out on digits_domains
    "source-only": [*FEDKA, "strategy.method=source", "strategy.voting_enabled=false"],
    "fedka": FEDKA,
    "fedka-no-vote": [*FEDKA, "strategy.voting_enabled=false"],
    "vote-hetero": ["strategy=vote", "+experiment=vote_digits_domains"],
}
# robust fusion against hostile clients: per-class logits (fd) and public-set
# probabilities (dsfl), each with every reducer
REDUCER_OPTIONS = {
    "mean": ["strategy.reducer=mean"],
    "median": ["strategy.reducer=median"],
    "trimmed": ["strategy.reducer=trimmed_mean", "+strategy.reducer_params.trim=0.2"],
    "gated": ["strategy.reducer=gated_mean"],
}
ROBUST = [f"{s}-{r}" for s in ("fd", "dsfl") for r in REDUCER_OPTIONS]
METHODS.update(
    {
        f"{s}-{r}": [f"strategy={s}", *REDUCER_OPTIONS[r]]
        for s in ("fd", "fedmd", "dsfl")
        for r in REDUCER_OPTIONS
    }
)
DOMAINS = ["original", "rotated", "inverted", "noisy", "blurred", "scaled"]
PRESETS = {
    # the five baselines, digits, 20 clients, Dirichlet 0.1, one seed
    "baselines": {
        "methods": ["local", "fd", "fedmd", "dsfl", "fedavg"],
        "values": [0.1],
        "seeds": [0],
        "setting": ["num_clients=20", "num_rounds=30"],
    },
    # every knowledge method x heterogeneity x 3 seeds on digits
    "fusion": {
        "methods": [
            m
            for m in METHODS
            if m not in ("source-only", "fedka", "fedka-no-vote", "vote-hetero", *ROBUST)
        ],
        "values": [0.1, 0.5, 5.0],
        "seeds": [0, 1, 2],
        "setting": ["num_clients=20", "num_rounds=20"],
    },
    # KnFu's claim: with large, very heterogeneous local data, local training wins;
    # personalised fusion should beat uniform fusion where clients differ.
    "knfu-claim": {
        "methods": ["local", "knfu-uniform", "knfu"],
        "values": [0.1, 5.0],
        "seeds": [0, 1, 2],
        "setting": [
            "num_clients=10",
            "num_rounds=20",
            "dataset=synthetic",
            "dataset.num_samples=30000",
            "dataset.class_sep=0.6",
        ],
    },
    # knowledge transfer at each method's defaults: digits, 10 clients, 20 rounds
    "distill": {
        "methods": ["local", "fd", "fedmd", "dsfl", "fedproto", "knfu-uniform", "knfu"],
        "values": [0.1, 0.5, 5.0],
        "seeds": [0, 1, 2],
        "setting": ["dataset=digits", "num_clients=10", "num_rounds=20"],
        "columns": "distill",
    },
    # the papers' qualitative claims on a larger benchmark (synthetic, 20,000 samples:
    # ~1,500 private samples per client and a 3,000-sample public set): ERA vs simple
    # averaging, FedMD vs local, personalised vs uniform KnFu, FedDF (heterogeneous
    # models) vs FedAvg (one model). class_sep 2.5: a centralised logistic regression
    # reaches ~95 % (at 1.5, ~71 %: every method's fused targets stay near chance)
    "claims": {
        "methods": [
            "local",
            "fedmd",
            "dsfl",
            "dsfl-sa",
            "knfu-uniform",
            "knfu",
            "feddf",
            "fedavg",
        ],  # fmt: skip
        "values": [0.1],
        "seeds": [0, 1, 2],
        "setting": [
            "dataset=synthetic",
            "dataset.num_samples=20000",
            "dataset.class_sep=2.5",
            "num_clients=10",
            "num_rounds=20",
            "client.epochs=1",
        ],
        "columns": "distill",
    },
    # robust fusion against a share of hostile clients, on the honest clients' accuracy
    "attacks": {
        "methods": ROBUST,
        "axis": "attack.fraction",
        "values": [0.0, 0.1, 0.2, 0.3],
        "seeds": [0, 1, 2],
        "setting": [
            "dataset=digits",
            "num_clients=10",
            "num_rounds=20",
            "attack.kind=random_logits",
        ],
        "columns": "attack",
    },
    # one attacker sending extreme but finite knowledge or an absurd sample count: the
    # bounds (configs/config.yaml, bounds.*) reject it, the honest clients are unharmed
    "hostile": {
        "methods": ["fedproto-weighted", "fedavg"],
        "axis": "attack.kind",
        "values": ["none", "scale", "count_claim"],
        "seeds": [0, 1, 2],
        "setting": [
            "dataset=digits",
            "num_clients=10",
            "num_rounds=20",
            "attack.clients=[0]",
            "attack.factor=1e30",
            "server.max_strikes=3",
        ],
        "columns": "hostile",
    },
    # every leave-one-domain-out task of digits_domains, FedKA and its ablations
    "domains": {
        "methods": ["source-only", "fedka", "fedka-no-vote", "vote-hetero"],
        "axis": "split.target_domain",
        "values": DOMAINS,
        "seeds": [0, 1, 2],
        "setting": [],
        "columns": "domain",
    },
}


def _final(key: str, which: str):
    return lambda s: s["final"][key][which] * 100 if key in s["final"] else None


def _target(which: str):
    """The global model's target accuracy; the mean client's for methods without one."""

    def get(s):
        key = (
            "global_model_target_acc"
            if "global_model_target_acc" in s["final"]
            else "global_test_acc"
        )
        return _final(key, which)(s)

    return get


def _last_round(key: str, scale: float = 100.0):
    def get(s):
        value = (s.get("rounds") or [{}])[-1].get(key)
        return None if value is None else value * scale

    return get


def _honest(key: str, which: str):
    """The honest clients' mean accuracy (every client's when nobody attacked)."""

    def get(s):
        name = f"honest_{key}" if f"honest_{key}" in s["final"] else key
        return _final(name, which)(s)

    return get


def _excluded(s) -> set[int]:
    return {int(c) for c in s.get("excluded_clients") or {}}


def _kb_per_round(s):
    return s["bytes_per_round"]["total"] / 1024


# column sets: (header, value of one run's summary.json or None)
COLUMNS = {
    # the last round only: a "best" round chosen on the test set would select on the test set
    "clients": [
        ("local-test last", _final("local_test_acc", "last")),
        ("global-test last", _final("global_test_acc", "last")),
        ("KB/round", _kb_per_round),
    ],
    # distillation health beside the clients' accuracy (last round)
    "distill": [
        ("local-test", _final("local_test_acc", "last")),
        ("global-test", _final("global_test_acc", "last")),
        ("after distil", _final("after_distill_global_acc", "last")),
        ("after train", _final("after_train_global_acc", "last")),
        ("target acc", _last_round("target_acc")),
        ("server model", _final("server_model_acc", "last")),
        ("KB/round", _kb_per_round),
    ],
    "attack": [
        ("honest global-test last", _honest("global_test_acc", "last")),
        ("honest local-test last", _honest("local_test_acc", "last")),
        ("attackers", lambda s: float(len(s.get("attackers", [])))),
        ("rejected/run", lambda s: float(sum((s.get("rejected_replies") or {}).values()))),
    ],
    "hostile": [
        ("honest global-test last", _honest("global_test_acc", "last")),
        ("honest local-test last", _honest("local_test_acc", "last")),
        ("rejected/run", lambda s: float(sum((s.get("rejected_replies") or {}).values()))),
        ("excluded attackers", lambda s: float(len(_excluded(s) & set(s.get("attackers", []))))),
        ("excluded honest", lambda s: float(len(_excluded(s) - set(s.get("attackers", []))))),
    ],
    "domain": [
        ("target last", _target("last")),
        ("clients' target last", _final("global_test_acc", "last")),
        ("voting acc last", _last_round("voting_acc")),
        ("group effect last", _last_round("group_effect")),
        ("KB/round", _kb_per_round),
    ],
}


def run_one(
    label: str,
    axis: str,
    value,
    seed: int,
    setting: list[str],
    out: Path,
    reuse: bool = False,
    runner: Runner | None = None,
) -> dict | None:
    run_dir = out / f"{label}-{axis.rsplit('.', 1)[-1]}{value}-s{seed}"
    summary_file = run_dir / "summary.json"
    if reuse and summary_file.exists():  # finished by an earlier fedkd-compare --out OUT
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if summary.get("status") == "finished":
            print(f"[compare] {label} {axis}={value} seed={seed}: reused", flush=True)
            return summary
    args = [
        *METHODS[label],
        f"{axis}={value}",
        f"seed={seed}",
        *setting,
        "logging.progress=false",
        "logging.table=false",
    ]
    print(f"[compare] {label} {axis}={value} seed={seed}", flush=True)
    if runner is None:
        with Runner() as own:
            result = own.run([*args, f"hydra.run.dir={run_dir}"])
    else:
        result = runner.run([*args, f"hydra.run.dir={run_dir}"])
    if result.status != 0 or not summary_file.exists():
        print(f"[compare]   failed: {result.last_line or 'no output'}", flush=True)
        return None
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    return summary if summary.get("status", "finished") == "finished" else None


def aggregate(summaries: list[dict], columns: str = "clients") -> dict[str, tuple[float, float]]:
    """Mean ± std over seeds of every column (runs without a value are left out)."""
    out = {}
    for header, get in COLUMNS[columns]:
        values = [v for s in summaries if (v := get(s)) is not None]
        out[header] = tables.mean_std(values)
    return out


def write_tables(
    rows: list[dict],
    seeds: int,
    md_path: Path,
    note: str,
    columns: str = "clients",
    axis: str = "alpha",
) -> None:
    headers = [h for h, _ in COLUMNS[columns]]
    lines = tables.markdown(
        ["method", axis, "runs", *headers],
        (
            [
                r["method"],
                f"{r['value']:g}" if isinstance(r["value"], float) else r["value"],
                f"{r['runs']}/{seeds}",
                *(
                    ["failed"] * len(headers)
                    if r["runs"] == 0
                    else [tables.cell(r[h], single=seeds == 1) for h in headers]
                ),
            ]
            for r in rows
        ),
    )
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines) + "\n\n" + note + "\n", encoding="utf-8")
    slug = [h.replace("'", "").replace("/", "_per_").replace(" ", "_") for h in headers]
    tables.write_csv(
        md_path.with_suffix(".csv"),
        ["method", axis, "runs", *tables.mean_std_columns(slug)],
        (
            [r["method"], r["value"], r["runs"], *tables.mean_std_values(r[h] for h in headers)]
            for r in rows
        ),
    )


def _value(text: str):
    """A command-line axis value: a number where it is one (alphas), else the string."""
    try:
        return float(text)
    except ValueError:
        return text


NOTES = {
    "hostile": (
        "Accuracies in % of the **honest** clients only (client 0 attacks: `scale` uploads its "
        "prototypes or weights times 1e30, `count_claim` claims num_train = 2^62; `none` is "
        "the attack-free run); rejected/run = replies the server refused; excluded = clients "
        "excluded after server.max_strikes=3 rejected payloads; mean ± std over seeds."
    ),
    "attack": (
        "Accuracies in % of the **honest** clients only (mean over the clients that did not "
        "attack; last = final round); attackers = clients "
        "whose uploads were replaced (a seeded choice per seed); rejected/run = replies the "
        "server refused; mean ± std over seeds."
    ),
    "clients": (
        "Accuracies in % (mean over clients, last round: no round is selected on the test "
        "set); mean ± std over seeds."
    ),
    "distill": (
        "Last round, in % (mean over clients; no round is selected on the test set): "
        "local-test and global-test accuracy; after distil / after train = global-test "
        "accuracy right after the round's distillation and after its local training; target "
        "acc = the fused targets against the public set's held-back labels (no method sees "
        "them); server model = the server's own model on the global test set (DS-FL's; FedDF's "
        "distilled group models, mean); mean ± std over seeds."
    ),
    "domain": (
        "Target accuracy in % on the held-out domain (transductive, as in FedKA): the global "
        "model's for source-only/FedKA, the mean client's for vote-hetero (no global model); "
        "last = final round. Clients' target = mean of the client models; "
        "group effect = global model minus that mean (points); mean ± std over seeds."
    ),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="baselines")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS))
    parser.add_argument(
        "--values",
        "--alphas",
        nargs="+",
        type=_value,
        help="values of the preset's axis (Dirichlet alphas; target domains for 'domains')",
    )
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument(
        "--out", type=Path, help="folder for the runs (default outputs/compare/<preset>-<time>)"
    )
    parser.add_argument("--table", type=Path, help="Markdown output (a .csv is written beside it)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --out: keep the runs that already finished there instead of running them again",
    )
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    methods = args.methods or preset["methods"]
    axis = preset.get("axis", "partition.alpha")
    values = args.values or preset["values"]
    seeds = args.seeds or preset["seeds"]
    columns = preset.get("columns", "clients")
    setting = [*preset["setting"], *args.set]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = args.out or Path("outputs") / "compare" / f"{args.preset}-{stamp}"
    table = args.table or Path("docs") / f"comparison-{args.preset}.md"

    rows = []
    with Runner() as runner:  # one Ray session for every run
        for value in values:
            for label in methods:
                summaries = [
                    s
                    for seed in seeds
                    if (s := run_one(label, axis, value, seed, setting, out, args.reuse, runner))
                    is not None
                ]
                rows.append(
                    {
                        "method": label,
                        "value": value,
                        "runs": len(summaries),
                        **aggregate(summaries, columns),
                    }
                )
    dataset = next((s.split("=", 1)[1] for s in setting if s.startswith("dataset=")), None)
    note = (
        f"Setting: {dataset or 'as each method sets it'}, `{axis}` as listed, "
        f"`{' '.join(setting) or 'preset defaults'}`, seeds {seeds}. {NOTES[columns]} "
        f"Reproduce with `fedkd-compare --preset {args.preset}"
        + (f" --methods {' '.join(args.methods)}" if args.methods else "")
        + (
            f" --values {' '.join(f'{v:g}' if isinstance(v, float) else v for v in args.values)}"
            if args.values
            else ""
        )
        + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds else "")
        + (f" --set {' '.join(args.set)}" if args.set else "")
        + (f" --table {table}" if table != Path("docs") / f"comparison-{args.preset}.md" else "")
        + "`."
    )
    axis_label = "alpha" if axis == "partition.alpha" else axis.rsplit(".", 1)[-1]
    write_tables(rows, len(seeds), table, note, columns, axis_label)
    print(table.read_text(encoding="utf-8"))
    print(f"[compare] wrote {table} and {table.with_suffix('.csv')}; runs in {out}")


if __name__ == "__main__":
    main()
