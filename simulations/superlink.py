"""``fedkd-stop-superlink [PORT]``: stop the local SuperLink ``flwr run`` left running, by its
process id.

``flwr run .`` starts ``flower-superlink`` in the background on 127.0.0.1, port
``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` (Flower's default 39091), and leaves it
running. This command finds the process of the current user that listens on that
port (``/proc/net/tcp`` and each process's open sockets), checks that it is a
``flower-superlink``, and stops it and every process it started by process id
(``simulations.proctree``); other users' SuperLinks and other ports are left alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_PORT = 39091  # Flower's LOCAL_SUPERLINK_HTTP_API_PORT
LISTEN = "0A"  # TCP state in /proc/net/tcp


def listening_inodes(port: int, tables: tuple[str, ...] = ("tcp", "tcp6")) -> set[str]:
    """Socket inodes listening on ``port`` (any address)."""
    inodes = set()
    for table in tables:
        try:
            lines = (Path("/proc/net") / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def owners(inodes: set[str]) -> list[int]:
    """This user's processes holding one of the socket ``inodes``."""
    found = []
    wanted = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != os.getuid():
                continue
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
        except OSError:
            continue
        if links & wanted:
            found.append(int(proc.name))
    return sorted(found)


def command_line(pid: int) -> str:
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def find_superlink(port: int) -> list[int]:
    """Process ids of this user's ``flower-superlink`` listening on ``port``."""
    return [
        pid for pid in owners(listening_inodes(port)) if "flower-superlink" in command_line(pid)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fedkd-stop-superlink", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=int,
        default=int(os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", DEFAULT_PORT)),
        help="the SuperLink's HTTP port (default: FLWR_LOCAL_SUPERLINK_HTTP_API_PORT or 39091)",
    )
    args = parser.parse_args(argv)
    pids = find_superlink(args.port)
    if not pids:
        print(
            f"fedkd-stop-superlink: no flower-superlink of yours listens on port {args.port}",
            file=sys.stderr,
        )
        sys.exit(1)
    from simulations.proctree import stop_tree

    survivors = stop_tree(pids, term_first=5)
    print(f"stopped flower-superlink (process {', '.join(map(str, pids))}) on port {args.port}")
    if survivors:
        print(f"fedkd-stop-superlink: still running: {survivors}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
