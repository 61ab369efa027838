"""Multirun job folders named by their overrides: ``strategy=fd,seed=0`` instead of ``0``.

``configs/config.yaml`` sets ``hydra.sweep.subdir`` to
``${fedkd_job:${hydra.overrides.task},${hydra.job.num}}``; the resolver, registered
when the launcher is imported, keeps the overrides the sweep varies (those with a
comma list, ``range(...)``, ``choice(...)`` or ``glob(...)`` on the command line) in
command-line order, so TensorBoard names each run ``strategy=fd,seed=0/tensorboard/...``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

RESOLVER = "fedkd_job"
MAX_NAME = 120  # characters of a folder name (file systems allow 255 bytes)
_SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(")
_UNSAFE = re.compile(r"[^A-Za-z0-9=,._+\-\[\]{}:@]")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _top_level_comma(value: str) -> bool:
    depth = 0
    quote = ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def swept_keys(argv: Sequence[str]) -> list[str]:
    """Keys the command line sweeps over, in command-line order."""
    keys = []
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        value = arg.split("=", 1)[1]
        if _top_level_comma(value) or value.strip().startswith(_SWEEP_FUNCTIONS):
            keys.append(_key(arg))
    return keys


def job_dir_name(task: Sequence[str], num: int | str, argv: Sequence[str] | None = None) -> str:
    """The folder of one job: its swept overrides (all its overrides if none is swept),
    made safe for a file name; the job number when there are none or the name is too long."""
    argv = sys.argv[1:] if argv is None else argv
    overrides = [o for o in task if "=" in o and not _key(o).startswith("hydra.")]
    swept = swept_keys(argv)
    if swept:
        chosen = {_key(o): o for o in overrides if _key(o) in swept}
        overrides = [chosen[k] for k in swept if k in chosen]
    name = ",".join(_UNSAFE.sub("_", o.lstrip("+~")) for o in overrides)
    if not name:
        return str(num)
    if len(name) > MAX_NAME:
        return f"{num}_{name[: MAX_NAME - len(str(num)) - 1]}"
    return name


def register() -> None:
    """Make ``${fedkd_job:...}`` available to Hydra (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(
            RESOLVER, lambda task, num: job_dir_name(list(task), num), use_cache=False
        )
