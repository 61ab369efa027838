"""``fedkd-sim`` / ``python -m simulations.run``: one Ray-backed Flower simulation.

Hydra composes ``configs/``; the run directory is Hydra's (``hydra.run.dir``
overrides it). The config and the data are checked before Ray starts: a bad
value prints one line naming it and exits with status 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedkd.console import (
    ConsoleHandler,
    file_handlers,
    log_to_files,
    mark_start,
    phase,
    route_through_console,
)
from fedkd.errors import ConfigError, FedkdError
from server.nodeloss import STOPPED
from simulations import batching, jobnames, nodeloss, sweepconfig, vce_patches
from simulations.cluster import (
    LOCAL,
    check_connect_timeout,
    check_inline_bytes,
    join_cluster,
    keep_launcher_signal_handlers,
    resolve_address,
    wait_for_head,
)

log = logging.getLogger("fedkd")


class RunStopped(FedkdError):
    """The run ended early and not as asked (server.nodeloss.STOPPED): one line, exit 1."""


jobnames.register()  # multirun job folders named by their overrides (configs/config.yaml)
sweepconfig.remember_job_configs()  # a multirun composes each job's config once
_JOBS_STARTED = [0]  # jobs this process has started (a multirun runs several)


def backend_config(cfg: dict[str, Any]) -> dict[str, Any]:
    sim = cfg["simulation"]
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": bool(cfg["logging"]["verbose"]),
        "logging_level": logging.INFO if cfg["logging"]["verbose"] else logging.ERROR,
    }
    address = resolve_address(sim)
    check_connect_timeout(sim)
    inline = check_inline_bytes(sim)
    nodeloss.check_policy(sim["on_node_loss"])
    nodeloss.check_depth(sim["messages_per_worker"])
    batching.check_limit(sim["messages_per_call"])
    if address != LOCAL:
        # join a running cluster (``ray start --head`` elsewhere): it owns the resources
        if sim["ray_num_cpus"]:
            raise ConfigError(
                "simulation.ray_num_cpus must be null with simulation.ray_address "
                "(the cluster's `ray start --num-cpus` sets it)"
            )
    else:
        if sim["ray_num_cpus"]:
            init_args["num_cpus"] = int(sim["ray_num_cpus"])
        # Ray's own threshold (100 KiB) puts a Context holding ~100 kB of weights, and the
        # reply carrying it back, through the object store; inline, a message costs about a
        # fifth of that (docs/performance.md, "Inline calls")
        init_args["_system_config"] = {"max_direct_call_object_size": inline}
    init_args["address"] = address  # "local": a private instance, never a running cluster
    return {
        "client_resources": {
            "num_cpus": float(sim["num_cpus_per_client"]),
            "num_gpus": float(sim["num_gpus_per_client"]),
        },
        "init_args": init_args,
    }


def quiet_libraries(verbose: bool) -> None:
    """Flower logs every message at INFO; keep the console for the progress bar.

    Called again once Flower is imported: its logger module sets the level to DEBUG as it
    loads, after which Flower's DEBUG lines (its backend config, every start and stop
    step) would reach the console and run.log."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO if verbose else logging.ERROR)
    route_through_console(flwr_logger)  # above the progress bar too
    if not verbose and not any(isinstance(f, _ClientFailures) for f in flwr_logger.filters):
        flwr_logger.addFilter(_ClientFailures())


class _ClientFailures(logging.Filter):
    """Keep Flower's tracebacks of failing ClientApps off the console unless verbose: the
    server already logs one line per rejected reply, naming the client and the reason."""

    GENERIC = "An exception was raised when processing a message by"

    def filter(self, record: logging.LogRecord) -> bool:
        from fedkd.client.faults import MARK

        text = record.getMessage()
        return MARK not in text and not text.startswith(self.GENERIC)


def console_logging(logs: dict[str, Any]) -> None:
    """Hydra's console handler per ``logging.level``, printing through rich's console (above
    the progress bar) at every level; its file handler (run.log) keeps everything.

    quiet: warnings and errors only; normal: no per-round lines (the progress bar
    shows them); verbose: per-round lines too.
    """
    root = logging.getLogger()
    route_through_console(root)
    for handler in root.handlers:
        if not isinstance(handler, ConsoleHandler):
            continue
        if logs["level"] == "quiet":
            handler.setLevel(logging.WARNING)
        if not logs["verbose"]:
            handler.addFilter(lambda record: not record.name.startswith("fedkd.rounds"))


def simulate(cfg: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Check ``cfg``, then run the simulation and return its summary.

    Once the federated split is built (a split that cannot be made fails without torch,
    Flower or Ray), Ray, its workers and their warm-up start in the background
    (``vce_patches.start_session``) while this process loads torch and checks the data
    against the strategy; a config or data error still ends the run with one line, after
    Ray is stopped again.
    """
    from fedkd.client.runtime import data_key, federated_data
    from server.recorder import console_options

    cfg["logging"].update(console_options(cfg["logging"]))  # logging.level -> the three switches
    backend = backend_config(cfg)  # simulation.ray_* checked too
    # a cluster to join must answer before anything is built (Ray would retry for minutes)
    wait_for_head(backend["init_args"]["address"], float(cfg["simulation"]["connect_timeout"]))
    phase("data", "building the federated data")
    federated_data(data_key(cfg))  # a split that cannot be made fails before torch loads
    from clients.simulation_mark import SIMULATION_ENV  # imports nothing: Ray starts sooner

    quiet_libraries(bool(cfg["logging"]["verbose"]))
    keep_launcher_signal_handlers()
    phase("Ray", f"starting Ray and its workers in the background ({cfg['num_clients']} clients)")
    early = vce_patches.start_session(backend, {SIMULATION_ENV: "1"}, json.dumps(cfg))
    try:
        return _simulate(cfg, Path(run_dir), backend, early, SIMULATION_ENV)
    finally:
        vce_patches.abandon_session()  # joins an unfinished start; Ray stays only if shared


def check_models(cfg: dict[str, Any], info: Any) -> None:
    """Build each client architecture once before the server starts (a one-line ConfigError
    if one cannot be built): in a warm Ray worker, which loads torch for its rounds anyway,
    so this process never imports torch for a strategy that computes nothing on the server
    (about 1.5 s of CPU while the workers start, docs/performance.md); here if no worker
    of this session can."""
    from simulations.worker import check_models as in_worker

    args = (cfg["model"], info.num_clients, tuple(info.input_shape), info.num_classes)
    phase("data", "building each client architecture once, in a worker")
    ran, error = vce_patches.call_in_worker(in_worker, *args)
    if not ran:
        error = in_worker(*args)
    if error is not None:
        raise ConfigError(error)


def _simulate(
    cfg: dict[str, Any], run_dir: Path, backend: dict[str, Any], early: bool, simulation_env: str
) -> dict[str, Any]:
    phase("libraries", "loading Flower")
    from flwr.simulation import run_simulation

    quiet_libraries(bool(cfg["logging"]["verbose"]))  # Flower's import set its level to DEBUG

    from clients.app import app as client_app
    from server.app import make_server_app, prepare_run
    from server.checkpoint import load_server_checkpoint
    from server.resume_check import check_resume

    phase("data", "checking the data against the strategy")
    info = prepare_run(cfg, build_models=False)  # raises FedkdError before the simulation starts
    if cfg["logging"]["tensorboard"]:
        from server.recorder import load_tensorboard_writer

        phase("libraries", "loading torch for TensorBoard's writer")
        load_tensorboard_writer()
    phase(
        "data",
        f"{info.num_clients} clients, {info.num_classes} classes, {info.num_public} public samples",
    )
    resume = None
    if cfg.get("resume"):  # the run's own config.yaml stays as it is
        resume = load_server_checkpoint(run_dir, cfg)  # also raises before the simulation
        check_resume(info, resume)  # the state fits this run: one line, not a traceback
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        text = OmegaConf.to_yaml(OmegaConf.create(cfg))
        (run_dir / "config.yaml").write_text(text, encoding="utf-8")
    if cfg["simulation"]["fast_pickup"]:
        vce_patches.install_pickup()
    find_roster = None
    if vce_patches.capture_nodes():  # the engine's own node -> partition mapping
        clients = int(cfg["num_clients"])

        def find_roster(grid, timeout):
            return vce_patches.simulation_roster(grid, timeout, clients)

    summary: dict[str, Any] = {}
    # lost Ray nodes: replaced or fatal, one line each (simulations/nodeloss.py); placement
    policy = cfg["simulation"]["on_node_loss"]
    verbose = bool(cfg["logging"]["verbose"])
    depth = nodeloss.resolve_depth(cfg)  # auto: 2, or 1 when faults hold clients back
    # auto: a share of the queued messages per Ray call, or 1 where the depth is 1
    batching.LIMIT = batching.resolve_limit(cfg["simulation"]["messages_per_call"], depth)
    watch = nodeloss.WATCH if nodeloss.install(policy, verbose, depth) else None
    per_call = "a share of the queue" if batching.LIMIT is None else f"up to {batching.LIMIT}"

    waited = vce_patches.wait_session()
    check_models(cfg, info)
    took = vce_patches.session_timings()
    if early and took:
        ray = "reused" if took["reused_ray"] else f"{took['ray']:.1f} s"
        pool = "reused warm" if took["reused_pool"] else f"{took['pool']:.1f} s"
        phase(
            "Ray",
            f"up in the background: Ray {ray}, actor pool {pool} "
            f"(waited {waited:.1f} s for it here); {depth} message(s) per worker, "
            f"{per_call} per call",
        )
    else:
        phase(
            "Ray",
            f"starting Ray and {cfg['num_clients']} virtual clients; {depth} message(s) per "
            f"worker, {per_call} per call",
        )
    server_app = make_server_app(
        cfg, run_dir, info, resume=resume, find_roster=find_roster, cluster=watch
    )
    # the clients take their privacy floor from the run config only in a simulation; the
    # mark is inherited by the local Ray cluster's workers and removed afterwards
    before = os.environ.get(simulation_env)
    os.environ[simulation_env] = "1"
    try:
        if not early and backend["init_args"]["address"] != LOCAL:  # a cluster's workers
            join_cluster(backend["init_args"], {simulation_env: "1"})
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=int(cfg["num_clients"]),
            backend_config=backend,
            verbose_logging=bool(cfg["logging"]["verbose"]),
        )
    finally:
        if before is None:
            os.environ.pop(simulation_env, None)
        else:
            os.environ[simulation_env] = before
    summary_file = run_dir / "summary.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    if summary.get("status") in STOPPED:  # a lost node under on_node_loss=fail, starved rounds
        reason = summary["stop_reason"]
        if "checkpoint is none" not in reason:
            reason = f"{reason}; continue with fedkd-sim resume={run_dir}"
        raise RunStopped(reason)
    return summary


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    from fedkd.schema import check_early
    from server.options import check_options
    from server.recorder import console_options

    plain = OmegaConf.to_container(cfg, resolve=True)
    overrides = list(HydraConfig.get().overrides.task)
    # a refused resume leaves the earlier run's directory as it was, run.log included:
    # its phase lines go to the console only
    own_run = not plain.get("resume")
    if not own_run:
        for handler in file_handlers():
            handler.addFilter(lambda record: record.name != "fedkd.phase")
    if _JOBS_STARTED[0]:  # a sweep's next job: its phase lines count from its own start
        mark_start()
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # the jobs share one Ray session
        vce_patches.share_session(True)
    _JOBS_STARTED[0] += 1
    try:
        run_dir = HydraConfig.get().runtime.output_dir
        if plain.get("resume"):
            from server.checkpoint import resume_config  # loads torch: only to resume

            plain = resume_config(plain, overrides, plain["resume"])
            run_dir = plain["resume"]
        plain["logging"].update(console_options(plain["logging"]))
        console_logging(plain["logging"])
        check_early(plain, overrides)  # no torch, no Flower, no data: well under 2 s
        check_options(plain)  # privacy, attacks, faults, optimisers: as light
        phase("config", f"composed and checked ({plain['strategy']['name']}, {run_dir})")
        simulate(plain, run_dir)
    except FedkdError as err:
        if own_run:
            log_to_files(f"fedkd-sim: error: {err}")  # the failed run's run.log says why
        print(f"fedkd-sim: error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        if own_run:
            log_to_files(f"fedkd-sim: failed:\n{traceback.format_exc()}")
        raise


def compose_or_explain() -> None:
    """Run Hydra; a composition error (unknown key or group option, ``+`` on an existing key)
    becomes one line with a "did you mean" and exit status 1."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from fedkd.schema import explain_compose_error

    explained = "HYDRA_FULL_ERROR" not in os.environ  # a user who asks for tracebacks gets them
    if explained:  # Hydra then raises its errors instead of printing them
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except (HydraException, OmegaConfBaseException) as err:
        if not explained:
            raise
        text = str(err)
        if err.__cause__ is not None:
            text = f"{text}\n{err.__cause__}"
        print(f"fedkd-sim: error: {explain_compose_error(text, sys.argv[1:])}", file=sys.stderr)
        sys.exit(1)


def resume_arguments(argv: list[str]) -> list[str]:
    """``resume=DIR``: Hydra works in DIR (its run.log goes on) and leaves DIR's .hydra alone."""
    resume = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if not resume or not resume[-1] or resume[-1] == "null":
        return argv
    run_dir = resume[-1]
    if any(a in ("-m", "--multirun") for a in argv):
        raise SystemExit("fedkd-sim: error: resume=DIR resumes one run; it takes no -m")
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if given and Path(given[-1]).resolve() != Path(run_dir).resolve():
        raise SystemExit(
            f"fedkd-sim: error: resume={run_dir} continues that run in its own directory "
            f"(hydra.run.dir={given[-1]} differs)"
        )
    if not Path(run_dir).is_dir():
        raise SystemExit(f"fedkd-sim: error: resume: no run directory {run_dir}")
    return [*argv, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def stop_everything(signum: int, frame: Any = None) -> None:
    """Ctrl-C / SIGTERM: stop every process this launcher started (Ray and its workers),
    by process id, then exit at once (status 128 + signal).

    It runs inside the signal handler instead of raising KeyboardInterrupt: Flower's
    engine waits for its worker threads in a ``with ThreadPoolExecutor`` block, which
    would wait again for threads that only stop once that block has ended.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:  # whatever fails here (stderr may be a closed pipe), the launcher still exits
        with contextlib.suppress(OSError, ValueError):
            print("fedkd-sim: interrupted; stopping the processes it started", file=sys.stderr)
            sys.stderr.flush()
        with contextlib.suppress(Exception):
            logging.shutdown()
        # what the engine's threads say about workers vanishing under them is expected: not shown
        logging.disable(logging.CRITICAL)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        from simulations.proctree import process_tree, stop_tree

        children = [p for p in process_tree([os.getpid()]) if p != os.getpid()]
        stop_tree(children, grace=20, term_first=5)
    finally:
        os._exit(128 + signum)


def main() -> None:
    """``fedkd-sim``: run, then end the process at once (``exit_now``)."""
    vce_patches.end_with_process(True)
    status = 0
    try:
        launch()
    except SystemExit as exit_:
        code = exit_.code
        status = code if isinstance(code, int) else (0 if code is None else 1)
        if isinstance(code, str):
            print(code, file=sys.stderr)
    except BaseException:  # as the interpreter would print it
        traceback.print_exc()
        status = 1
    exit_now(status)


def exit_now(status: int) -> None:
    """End the process with ``status`` once everything is written: stop every process it
    started (its private Ray instance: daemons and workers) by process id, then exit
    without the interpreter's teardown.

    Nothing is left to compute by then (the run's files are closed, fsynced where they
    must be, and its table printed); Ray's graceful ``ray.shutdown`` (each actor, then each
    daemon in turn) and the teardown of torch, Flower and Ray's modules took about 5 s of
    a 20-round run (docs/performance.md).
    """
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    with contextlib.suppress(Exception):
        logging.shutdown()
    logging.disable(logging.CRITICAL)  # what a thread says as Ray's processes go is not shown
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    try:
        from simulations.proctree import process_tree, stop_tree

        children = [p for p in process_tree([os.getpid()]) if p != os.getpid()]
        if children:
            stop_tree(children, grace=20)
        for pid in children:  # collected here, not left to init as zombies
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
    finally:
        os._exit(status)


def launch() -> None:
    """One ``fedkd-sim`` command in this process, which goes on afterwards (the runner's)."""
    mark_start()
    sys.argv = [sys.argv[0], *resume_arguments(sys.argv[1:])]
    # Ray's core installs a handler that turns SIGTERM into an abort (status -6, nothing
    # stopped); without it the signal reaches ours, which stops what the launcher started
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    # set explicitly: Python keeps SIGINT ignored when started from a shell's background job
    signal.signal(signal.SIGINT, stop_everything)
    signal.signal(signal.SIGTERM, stop_everything)
    compose_or_explain()


if __name__ == "__main__":
    main()
