"""stop_tree: a process that leaves the tree after SIGTERM is still stopped."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from simulations.proctree import alive, stop_tree

# The parent starts a child that ignores SIGTERM, prints the child's pid and
# exits on SIGTERM (default action): the child is re-parented to init and is no
# longer in the parent's tree when the SIGKILL phase scans it.
PARENT = textwrap.dedent(
    """
    import signal, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()  # the child ignores SIGTERM from here on
    print(child.pid, flush=True)
    signal.pause()
    """
)


def test_a_child_orphaned_by_sigterm_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        left = stop_tree([parent], term_first=2.0)
        assert left == []
        assert not alive(child)
    finally:
        for pid in (parent.pid, child):
            if alive(pid):
                subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.wait()
