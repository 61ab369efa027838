"""Compose each multirun job's config once instead of twice.

Hydra's ``BasicSweeper`` first composes the config of every job of a batch to fail early
on one that cannot be composed (``Sweeper.validate_batch_is_legal``), then its
``BasicLauncher`` composes each job's config again just before running it
(``ConfigLoaderImpl.load_sweep_config`` both times). A composition of
``configs/config.yaml`` takes about 0.13 s; a deep copy of the result about 0.01 s
(docs/performance.md, "Sweeps").

``remember_job_configs`` makes ``load_sweep_config`` keep the first composition of each
(config name, overrides) pair in this process and hand out deep copies of it: the
launcher mutates the config it gets (the job's id and number), so no caller ever sees
another's object. The early failure stays as it is: an override that cannot be composed
raises in the first call, and nothing is kept for it. Config files are read once per
job and sweep, at the sweep's start, so every job runs the configs as they were then.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

MAX_KEPT = 4096  # configs kept per process: a sweep holds one per job


def remember_job_configs() -> bool:
    """Install the memo on Hydra's config loader; False if this Hydra has no
    ``load_sweep_config`` to wrap (then nothing changes)."""
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
    except ImportError:
        return False
    original = getattr(ConfigLoaderImpl, "load_sweep_config", None)
    if original is None:
        return False
    if getattr(original, "_fedkd_memo", False):
        return True

    from omegaconf import OmegaConf

    kept_by_loader: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Any]] = (
        weakref.WeakKeyDictionary()
    )

    def load_sweep_config(self: Any, master_config: Any, sweep_overrides: list[str]) -> Any:
        kept = kept_by_loader.setdefault(self, {})
        key = (
            str(master_config.hydra.job.config_name),
            tuple(OmegaConf.to_container(master_config.hydra.overrides.hydra)),
            tuple(sweep_overrides),
        )
        composed = kept.get(key)
        if composed is None:
            composed = original(self, master_config, sweep_overrides)
            if len(kept) >= MAX_KEPT:
                kept.clear()
            kept[key] = composed
        config = copy.deepcopy(composed)
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
        return config

    load_sweep_config._fedkd_memo = True  # type: ignore[attr-defined]
    load_sweep_config.__wrapped__ = original  # type: ignore[attr-defined]
    ConfigLoaderImpl.load_sweep_config = load_sweep_config
    return True
