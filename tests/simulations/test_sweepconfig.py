"""A multirun composes each job's config once (simulations/sweepconfig.py): the sweeper's
check and the launcher get equal, independent configs from one composition."""

from __future__ import annotations

import pytest
from helpers import ROOT
from hydra import initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from simulations import sweepconfig


@pytest.fixture
def loader():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        yield GlobalHydra.instance().config_loader()


def _counting(monkeypatch) -> list[list[str]]:
    calls: list[list[str]] = []
    compose = ConfigLoaderImpl.load_configuration

    def counted(
        self, config_name, overrides, run_mode, from_shell=True, validate_sweep_overrides=True
    ):
        calls.append(list(overrides))
        return compose(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counted)
    # start from Hydra's own (importing simulations.run installs the memo for the session)
    hydras = getattr(ConfigLoaderImpl.load_sweep_config, "__wrapped__", None)
    monkeypatch.setattr(
        ConfigLoaderImpl, "load_sweep_config", hydras or ConfigLoaderImpl.load_sweep_config
    )
    return calls


def test_each_job_is_composed_once_and_every_caller_gets_its_own_copy(loader, monkeypatch):
    calls = _counting(monkeypatch)
    master = loader.load_configuration("config", ["seed=0,1"], RunMode.MULTIRUN)
    calls.clear()
    plain = ConfigLoaderImpl.load_sweep_config
    expected = plain(loader, master, ["seed=1", "num_rounds=3"])
    assert len(calls) == 1
    calls.clear()
    assert sweepconfig.remember_job_configs()
    assert sweepconfig.remember_job_configs()  # installed once
    checked = loader.load_sweep_config(master, ["seed=1", "num_rounds=3"])  # the sweeper
    launched = loader.load_sweep_config(master, ["seed=1", "num_rounds=3"])  # the launcher
    other = loader.load_sweep_config(master, ["seed=0", "num_rounds=3"])
    assert len(calls) == 2  # one composition per job, not per call
    assert OmegaConf.to_container(launched) == OmegaConf.to_container(expected)
    assert launched is not checked and launched.seed == 1 and other.seed == 0
    with open_dict(launched):  # what the launcher does to its copy
        launched.hydra.job.num = 7
        launched.num_rounds = 9
    again = loader.load_sweep_config(master, ["seed=1", "num_rounds=3"])
    assert OmegaConf.is_missing(again.hydra.job, "num") and again.num_rounds == 3
    assert len(calls) == 2


def test_a_job_that_cannot_be_composed_fails_in_every_call(loader, monkeypatch):
    calls = _counting(monkeypatch)
    master = loader.load_configuration("config", ["seed=0,1"], RunMode.MULTIRUN)
    assert sweepconfig.remember_job_configs()
    calls.clear()
    for _ in range(2):
        with pytest.raises(ConfigCompositionException):
            loader.load_sweep_config(master, ["strategy=nosuch"])
    assert len(calls) == 2  # nothing kept for it
