"""What every ``fedkd-*`` command line shares: its parser and its one-line error exit."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the module docstring ``doc`` as written."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def fail(prog: str, message: object) -> NoReturn:
    """``<prog>: error: <message>`` on stderr, exit status 1."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(1)
