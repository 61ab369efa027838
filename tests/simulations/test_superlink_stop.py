"""``fedkd-stop-superlink`` stops the SuperLink on one port, by process id, and no other."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import alive, stop_tree

from simulations import superlink

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # starts a flower-superlink process
def test_stops_the_superlink_listening_on_the_port(tmp_path, capsys):
    exe = BIN / "flower-superlink"
    if not exe.exists():
        pytest.skip("flower-superlink not installed beside this interpreter")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "--insecure", "--simulation", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env={
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(tmp_path / "home"),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    other = socket.socket()  # another listener of ours, on another port: not a SuperLink
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        deadline = time.monotonic() + 120  # hang guard: start-up on a loaded machine
        while proc.pid not in superlink.find_superlink(port):
            assert proc.poll() is None, "flower-superlink exited during start-up"
            assert time.monotonic() < deadline, "flower-superlink never listened"
            time.sleep(0.2)
        assert superlink.find_superlink(other.getsockname()[1]) == []
        superlink.main([str(port)])
        assert f"(process {proc.pid})" in capsys.readouterr().out
        proc.wait(timeout=60)
        assert not alive(proc.pid)
        with pytest.raises(SystemExit):
            superlink.main([str(port)])
        assert "no flower-superlink of yours listens" in capsys.readouterr().err
    finally:
        other.close()
        survivors = stop_tree([proc], grace=120)  # returns as soon as none is left
    assert not survivors
