"""The sequential reference of ``fedkd-bench``: one FD run in one process, no Flower, no Ray.

It performs the identical computation as ``fedkd-sim`` with ``strategy=fd``:
the same data (``fedkd.client.runtime.client_tensors``), the same models and seeds
(the ClientApp's ``torch.manual_seed(seed * 7919 + id)`` before building a
client's model, batch order from ``round_generator(seed, round, id)``), the same client
round (``fedkd.client.round.run_round``: train with the FD regulariser, evaluate on
the local and global test sets, extract per-label logits), and the registered strategy's
own pure functions: the seeded sampling (``fedkd.sampling.sample_clients`` on the
strategy's ``sample`` stream), the plan (``server.strategies.fd.fd_plan``) and the fusion
(``server.strategies.fd.mean_teacher``), client after client on one torch thread per
client (``simulation.torch_threads``), as a Ray worker has. Only the orchestration is
missing, so ``fedkd-sim`` time / reference time is what Flower, Ray and the wire cost,
and the accuracies must agree.

Written as a plain loop on purpose (nanoGPT style): the benchmark shares the client's
computation, the sampling, the plan and the fusion with what it measures, nothing of the
orchestration.

    python -m simulations.reference --out DIR [hydra overrides ...]

writes ``DIR/summary.json`` (``wall_time_s``, ``rounds_time_s``, ``final``,
``rounds``, ``client_updates``) in the shape ``fedkd-sim`` writes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkd.client.round import round_generator, run_round
from fedkd.client.runtime import client_tensors, configure_torch, data_key
from fedkd.config import check_config, compose
from fedkd.confusion import confusion_due
from fedkd.errors import FedkdError
from fedkd.knowledge import ClassLogits
from fedkd.models import build_model, spec_for_client
from fedkd.sampling import sample_clients
from fedkd.train import resolve_device
from server.strategies.base import FedkdStrategy
from server.strategies.fd import fd_plan, mean_teacher


def sample(cfg: dict[str, Any], server_round: int) -> list[int]:
    """The clients the server samples in ``server_round`` (every client answers, none is
    excluded: the strategy's rule on all ids)."""
    server = cfg["server"]
    stream = FedkdStrategy.STREAMS["sample"]
    return sample_clients(
        range(int(cfg["num_clients"])),
        float(server["fraction_train"]),
        int(server["min_train_clients"]),
        np.random.default_rng([int(cfg["seed"]), server_round, stream]),
    )


def run_reference(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run ``cfg`` (strategy ``fd``, teacher ``mean``) sequentially; return its summary."""
    started = time.perf_counter()
    check_config(cfg)
    params = cfg["strategy"]
    if params["name"] != "fd" or params["teacher"] != "mean":
        raise FedkdError("the reference implements strategy=fd with strategy.teacher=mean only")
    if cfg["privacy"]["name"] != "none" or cfg["attack"]["kind"] != "none":
        raise FedkdError("the reference runs without privacy and attacks")
    if cfg["knowledge"]["encoding"] != "float32":
        # the reference exchanges knowledge in memory: a lossy wire encoding would make
        # the simulation compute something else, and the comparison would not be exact
        raise FedkdError("the reference exchanges float32 knowledge only (knowledge.encoding)")
    configure_torch(int(cfg["simulation"]["torch_threads"]))
    seed, key = int(cfg["seed"]), data_key(cfg)
    device = resolve_device(cfg["client"]["device"])
    num_rounds = int(cfg["num_rounds"])
    plan = fd_plan(params)
    models: dict[int, torch.nn.Module] = {}  # personal models of the clients sampled so far
    teacher: ClassLogits | None = None
    rounds: list[dict[str, Any]] = []
    updates = 0
    loop_start = time.perf_counter()
    for rnd in range(1, num_rounds + 1):
        round_start = time.perf_counter()
        round_plan = plan
        if confusion_due(cfg["logging"]["confusion_every"], rnd, num_rounds):
            round_plan = plan.with_(confusion=True)
        uploads: dict[int, ClassLogits] = {}
        accs: dict[str, list[float]] = {"local_test_acc": [], "global_test_acc": []}
        for cid in sample(cfg, rnd):
            data = client_tensors(key, cid)
            if cid not in models:
                torch.manual_seed(seed * 7919 + cid)  # as the ClientApp does before building
                spec = spec_for_client(cfg["model"], cid)
                feature_dim = int(cfg["model"]["feature_dim"])
                model = build_model(spec, data.input_shape, data.num_classes, feature_dim)
                models[cid] = model.to(device)
            output = run_round(
                models[cid],
                data,
                plan=round_plan,
                client_cfg=cfg["client"],
                received=teacher,
                request_indices=None,
                generator=round_generator(seed, rnd, cid),
                server_round=rnd,
                device=device,
            )
            uploads[cid] = output.payload
            for name, values in accs.items():
                values.append(float(output.metrics[name]))
            updates += 1
        teacher = mean_teacher(uploads, params)
        row = {"round": rnd, "num_clients": len(uploads)}
        row.update({name: float(np.mean(values)) for name, values in accs.items()})
        row["round_time_s"] = time.perf_counter() - round_start
        rounds.append(row)
    loop_time = time.perf_counter() - loop_start
    final = {}
    for name in ("global_test_acc", "local_test_acc"):
        final[name] = {  # the last round only, as the simulator reports it
            "last": rounds[-1][name],
            "last_round": rounds[-1]["round"],
        }
    return {
        "status": "finished",
        "reference": True,
        "wall_time_s": time.perf_counter() - started,
        "rounds_time_s": loop_time,
        "client_updates": updates,
        "torch_threads": torch.get_num_threads(),
        "final": final,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.reference",
        description="fedkd-bench's sequential FD reference (no Flower, no Ray)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/config.yaml")
    args = parser.parse_args(argv)
    try:
        summary = run_reference(compose(args.overrides))
    except FedkdError as err:
        print(f"reference: error: {err}", file=sys.stderr)
        sys.exit(1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    g = summary["final"]["global_test_acc"]["last"]
    print(f"reference: {summary['wall_time_s']:.1f}s, global acc {g:.4f} -> {args.out}")


if __name__ == "__main__":
    main()
