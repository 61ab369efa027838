"""``fedkd-flwr-run``: ``flwr run --stream``, then the run's outcome as the exit status.

Flower's ``flwr run`` exits 0 once the run is submitted, whatever the run then does (with
or without ``--stream``). This command takes the same arguments and

1. checks the run config's ``overrides`` here first, as the ServerApp will (the checks
   of ``server.serverapp``, with this installation's ``configs/``; no torch): a bad value
   is one line and exit status 1 in a second or two, and nothing is submitted;
2. runs ``flwr run ARGS --stream`` (its output passes through) and reads the run id;
3. asks ``flwr list SUPERLINK --run-id ID --format json`` for the run's final status and
   exits 1 with one line when the run failed or was stopped (a data file a SuperNode
   cannot read, a SuperNode that never joins, an error during the rounds)::

    fedkd-flwr-run . -c "overrides='strategy=fdd'"
    fedkd-flwr-run: error: strategy=fdd: no such strategy; did you mean fd? (options: ...)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

# options of ``flwr run`` that take a value (the rest of the words are APP and SUPERLINK)
VALUE_OPTIONS = ("--federation", "--run-config", "-c", "--federation-config", "--format")
PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")  # as flwr.common.config
STARTED = re.compile(r"Successfully started run (\d+)")
FAILED_WITH = re.compile(r"^\w+ failed with exception: ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROG = "fedkd-flwr-run"


def superlink_of(args: Sequence[str]) -> str | None:
    """The SUPERLINK argument of ``flwr run [APP] [SUPERLINK] [OPTIONS]``, if given."""
    positional: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in VALUE_OPTIONS:
            skip = True
            continue
        if arg.startswith("-"):
            continue
        positional.append(arg)
    return positional[1] if len(positional) > 1 else None


def flwr_binary() -> str:
    beside = Path(sys.executable).parent / "flwr"
    found = str(beside) if beside.exists() else shutil.which("flwr")
    if not found:
        raise SystemExit(f"{PROG}: error: no flwr command beside {sys.executable} or on PATH")
    return found


def run_status(flwr: str, superlink: str | None, run_id: int) -> tuple[str, str]:
    """``(status, details)`` of a run from ``flwr list --run-id ID --format json``."""
    cmd = [flwr, "list", *([superlink] if superlink else []), "--run-id", str(run_id)]
    result = subprocess.run([*cmd, "--format", "json"], capture_output=True, text=True)
    try:
        runs = json.loads(result.stdout)["runs"]
        return str(runs[0]["status"]), str(runs[0].get("status-details", ""))
    except (ValueError, KeyError, IndexError, TypeError):
        text = (result.stdout + result.stderr).strip().splitlines()
        return "unknown", text[-1] if text else "flwr list gave no answer"


def final_status(flwr: str, superlink: str | None, run_id: int, wait: float) -> tuple[str, str]:
    """The run's status once it is finished (the stream can end a moment before)."""
    deadline = time.monotonic() + wait
    while True:
        status, details = run_status(flwr, superlink, run_id)
        if status.startswith("finished") or time.monotonic() > deadline:
            return status, details
        time.sleep(1.0)


def values_of(args: Sequence[str], options: Sequence[str]) -> list[str]:
    """The values given to ``options`` (``-c X``, ``--run-config X``, ``--run-config=X``)."""
    out = []
    for i, arg in enumerate(args):
        if arg in options and i + 1 < len(args):
            out.append(args[i + 1])
        elif "=" in arg and arg.split("=", 1)[0] in options and arg.startswith("--"):
            out.append(arg.split("=", 1)[1])
    return out


def run_config_of(args: Sequence[str]) -> dict[str, Any]:
    """The ``-c`` / ``--run-config`` values as Flower reads them: ``key=value`` pairs with
    TOML values (``overrides='strategy=fd' run_dir='out'``), or one ``.toml`` file."""
    values = values_of(args, ("-c", "--run-config"))
    if len(values) == 1 and values[0].endswith(".toml"):
        return tomllib.loads(Path(values[0]).expanduser().read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    for value in values:
        pairs = PAIR.findall(value)
        try:
            out.update(tomllib.loads("\n".join(f"{k} = {v}" for k, v in pairs)))
        except tomllib.TOMLDecodeError as err:
            raise SystemExit(
                f"{PROG}: error: cannot read the run config {value!r}: {err}"
            ) from None
    return out


def precheck(args: Sequence[str]) -> None:
    """The ServerApp's config checks, before submitting (a FedkdError: one line)."""
    from server.options import check_flwr_config, overrides_from_run_config

    values = values_of(args, VALUE_OPTIONS)
    positional = [a for a in args if not a.startswith("-") and a not in values]
    if positional and positional[0].startswith("@"):  # a published app: its own configs
        return
    check_flwr_config(overrides_from_run_config(run_config_of(args)))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    from fedkd.errors import FedkdError

    try:
        precheck(args)
    except FedkdError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    flwr = flwr_binary()
    if "--stream" not in args:
        args.append("--stream")
    proc = subprocess.Popen(
        [flwr, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    run_id = None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        found = STARTED.search(ANSI.sub("", line))
        if found and run_id is None:
            run_id = int(found.group(1))
    code = proc.wait()
    if code != 0:
        print(f"{PROG}: error: flwr run exited with status {code}", file=sys.stderr)
        return code
    if run_id is None:
        print(f"{PROG}: error: flwr run printed no run id", file=sys.stderr)
        return 1
    status, details = final_status(flwr, superlink_of(args), run_id, wait=60.0)
    if status.endswith(":completed"):
        return 0
    # Flower's details: "ServerApp failed with exception: <the error>"; fedkd's start-up
    # failures are one line per client that cannot start
    text = FAILED_WITH.sub("", details.strip()) or "no details"
    for line in [ln.strip() for ln in text.splitlines() if ln.strip()]:
        print(f"{PROG}: error: run {run_id} {status}: {line}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
