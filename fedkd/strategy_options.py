"""What each strategy uploads and which options it accepts, checked without torch or Flower.

A strategy's traits (``StrategySpec``: what its clients upload, whether it needs a public
set, which privacy and Swing modes apply) and the checks of its ``strategy.*`` options live
here, so that a bad value stops the run right after the config is composed, before torch,
Flower or the data load. The server's strategy classes (``server/strategies/``) take their
traits from ``SPECS`` and their ``check_config`` is ``check_strategy``: one set of rules.

Optimiser specs (``{name: adam, lr: 0.001}``) and distillation losses are checked here
against the option names and target spaces of ``fedkd.train.OPTIMIZERS`` and
``fedkd.losses.LOSSES`` (tests keep the tables equal).
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedkd.errors import ConfigError

# ---------------------------------------------------------------- optimisers and losses
# keyword options of fedkd.optim's SGD / Adam / AdamW, torch.optim's (``params`` aside)
OPTIMIZER_OPTIONS: dict[str, tuple[str, ...]] = {
    "sgd": (
        "lr",
        "momentum",
        "dampening",
        "weight_decay",
        "nesterov",
        "maximize",
        "foreach",
        "differentiable",
        "fused",
    ),
    "adam": (
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "amsgrad",
        "foreach",
        "maximize",
        "capturable",
        "differentiable",
        "fused",
        "decoupled_weight_decay",
    ),
    "adamw": (
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "amsgrad",
        "maximize",
        "foreach",
        "capturable",
        "differentiable",
        "fused",
    ),
}

# the target space of each loss in fedkd.losses.LOSSES
LOSS_SPACES: dict[str, str] = {
    "kl": "logits",
    "kl_probs": "probs",
    "soft_ce": "probs",
    "swing_kl": "probs",
    "l1": "logits",
    "mse": "features",
}


def _hint(name: Any, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _number(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(float(value))
    )


def check_optimizer(where: str, spec: Any) -> None:
    """``spec`` names a known optimiser with options it accepts and values torch accepts.

    Everything torch's constructors refuse is checked here, without importing torch, which the
    launcher does not need before its data is built (docs/performance.md).
    tests/fedkd/test_strategy_options.py holds it against the registered classes.
    """
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(
            f"{where} must be a mapping with a 'name', e.g. {{name: adam, lr: 0.001}} "
            f"(got {spec!r})"
        )
    name = spec["name"]
    if name not in OPTIMIZER_OPTIONS:
        raise ConfigError(
            f"{where}.name={name}: unknown optimizer{_hint(name, list(OPTIMIZER_OPTIONS))} "
            f"(options: {', '.join(OPTIMIZER_OPTIONS)})"
        )
    allowed = OPTIMIZER_OPTIONS[name]
    for key, value in spec.items():
        if key == "name" or value is None:
            continue
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}: optimizer '{name}' has no option '{key}'"
                f"{_hint(key, allowed)} (options: {', '.join(allowed)})"
            )
        if key in ("lr", "momentum", "weight_decay", "eps", "dampening") and (
            not _number(value) or value < 0
        ):
            raise ConfigError(
                f"{where}.{key} must be a number >= 0 (got {value!r}), e.g. {where}.lr=0.01"
            )
        if key == "betas" and (
            not isinstance(value, Sequence)
            or isinstance(value, str)
            or len(value) != 2
            or not all(_number(b) and 0 <= b < 1 for b in value)
        ):
            raise ConfigError(
                f"{where}.betas must be two numbers in [0, 1) (got {value!r}), "
                f"e.g. {where}.betas=[0.9,0.999]"
            )
    if spec.get("fused") and (spec.get("differentiable") or spec.get("foreach")):
        clash = "differentiable" if spec.get("differentiable") else "foreach"
        raise ConfigError(
            f"{where}.fused=true cannot go with {where}.{clash}=true (torch refuses the pair); "
            f"set one of them to false"
        )
    if (
        name == "sgd"
        and spec.get("nesterov")
        and not (float(spec.get("momentum") or 0) > 0 and float(spec.get("dampening") or 0) == 0)
    ):
        raise ConfigError(
            f"{where}.nesterov=true needs momentum > 0 and dampening 0 "
            f"(set {where}.momentum=0.9 or {where}.nesterov=false)"
        )


def check_loss(key: str, name: Any, space: str) -> None:
    """Loss ``name`` (at config key ``key``) exists and takes targets in ``space``."""
    if name not in LOSS_SPACES:
        raise ConfigError(
            f"{key}={name}: unknown loss{_hint(name, list(LOSS_SPACES))} "
            f"(options: {', '.join(LOSS_SPACES)})"
        )
    if LOSS_SPACES[name] != space:
        fits = [n for n, s in LOSS_SPACES.items() if s == space]
        raise ConfigError(
            f"{key}={name}: loss '{name}' needs {LOSS_SPACES[name]} targets but the payload "
            f"carries {space}; use one of {', '.join(fits)} (no silent conversion)"
        )


def check_budget_and_optimizer(section: Any, where: str) -> None:
    """A ``distill`` step budget (fedkd.schedule) with a usable optimiser."""
    from fedkd.schedule import check_budget

    check_budget(section, where)
    check_optimizer(f"{where}.optimizer", section["optimizer"])


# ---------------------------------------------------------------- strategy traits
@dataclass(frozen=True)
class StrategySpec:
    """What one strategy is, as far as the config checks need to know."""

    name: str
    upload_kind: str | None = None  # fedkd.knowledge kind every reply carries
    upload_space: str = "logits"  # public-set uploads: logits or probs
    needs_public_set: bool = False
    supports_central: bool = False  # fuses with a plain mean: privacy=central applies
    personalised: bool = False  # a different fused payload per client (KnFu)
    supports_swing: bool = False  # uploads probabilities a Swing release can replace
    homogeneous_only: bool = False  # averages weights: identical models everywhere
    subset_key: str = ""  # strategy option holding the per-round public subset size
    check: Callable[[Mapping[str, Any]], None] | None = field(default=None, compare=False)

    TRAITS = (
        "upload_kind",
        "upload_space",
        "needs_public_set",
        "supports_central",
        "personalised",
        "supports_swing",
        "homogeneous_only",
        "subset_key",
    )


SPECS: dict[str, StrategySpec] = {}


def _spec(name: str, **traits: Any) -> Callable[[Callable], Callable]:
    def decorator(check: Callable[[Mapping[str, Any]], None]) -> Callable:
        SPECS[name] = StrategySpec(name=name, check=check, **traits)
        return check

    return decorator


def spec_of(name: Any) -> StrategySpec:
    if name not in SPECS:
        raise ConfigError(
            f"strategy={name}: no such strategy{_hint(name, list(SPECS))} "
            f"(options: {', '.join(sorted(SPECS))})"
        )
    return SPECS[name]


def check_strategy(cfg: Mapping[str, Any]) -> StrategySpec:
    """Check the ``strategy`` section of ``cfg`` (one-line ConfigError); returns its spec."""
    spec = spec_of(cfg["strategy"]["name"])
    if spec.check is not None:
        spec.check(cfg)
    return spec


# ---------------------------------------------------------------- shared pieces
@functools.cache
def _defaults(strategy: str) -> dict[str, Any]:
    """``configs/strategy/<strategy>.yaml`` (the defaults an error message can suggest)."""
    import yaml

    from fedkd.config import config_dir

    path = config_dir() / "strategy" / f"{strategy}.yaml"
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    if isinstance(loaded, dict) and isinstance(loaded.get("strategy"), dict):
        loaded = loaded["strategy"]  # a ``# @package _global_`` file (feddf, fedka)
    return loaded if isinstance(loaded, dict) else {}


def _fix(p: Mapping[str, Any], key: str, fits: Callable[[Any], bool]) -> str:
    """``"; set e.g. strategy.KEY=DEFAULT (the default)"`` when the default fits."""
    default = _defaults(str(p.get("name")))
    value = default.get(key)
    if key in default and value is not None and fits(value):
        shown = str(value).lower() if isinstance(value, bool) else value
        return f"; set e.g. strategy.{key}={shown} (the default)"
    return ""


def _at_least(p: Mapping[str, Any], key: str, low: float, kind: str = "number") -> None:
    def fits(value: Any) -> bool:
        return _number(value) and (kind != "int" or isinstance(value, int)) and value >= low

    if not fits(p.get(key)):
        what = "an integer" if kind == "int" else "a number"
        raise ConfigError(
            f"strategy.{key} must be {what} >= {low:g} (got {p.get(key)!r}){_fix(p, key, fits)}"
        )


def _positive(p: Mapping[str, Any], key: str) -> None:
    def fits(value: Any) -> bool:
        return _number(value) and value > 0

    if not fits(p.get(key)):
        raise ConfigError(f"strategy.{key} must be > 0 (got {p.get(key)!r}){_fix(p, key, fits)}")


def _bool(p: Mapping[str, Any], key: str) -> None:
    if not isinstance(p.get(key), bool):
        raise ConfigError(
            f"strategy.{key} must be true or false (got {p.get(key)!r})"
            f"{_fix(p, key, lambda v: isinstance(v, bool))}"
        )


def _one_of(p: Mapping[str, Any], key: str, options: Sequence[str]) -> None:
    if p.get(key) not in options:
        raise ConfigError(
            f"strategy.{key}={p.get(key)}: must be one of {', '.join(options)}"
            f"{_hint(p.get(key), options)}"
        )


def _subset(cfg: Mapping[str, Any], key: str) -> None:
    _at_least(cfg["strategy"], key, 1, "int")


def _reducer(p: Mapping[str, Any], weighted: bool = False) -> None:
    """``reducer`` + ``reducer_params`` on a toy input (the fusion code's own check)."""
    import numpy as np

    from fedkd.fusion.reduce import REDUCERS, reduce

    name = p["reducer"]
    if name not in REDUCERS:
        raise ConfigError(
            f"strategy.reducer={name}: unknown reducer{_hint(name, list(REDUCERS))} "
            f"(options: {', '.join(REDUCERS)})"
        )
    try:
        reduce(name, np.zeros((3, 1)), np.ones(3) if weighted else None, p["reducer_params"] or {})
    except ConfigError as err:
        raise ConfigError(f"strategy.reducer_params: {err}") from None


def swing_of(cfg: Mapping[str, Any], spec: StrategySpec) -> Any:
    """The run's Swing options (``swing=adaptive``), None when off; one-line errors."""
    section = cfg["swing"]
    if section["name"] == "none":
        return None
    if not spec.supports_swing:
        raise ConfigError(
            f"swing needs a strategy that uploads probabilities on the public set "
            f"(dsfl, knfu); '{cfg['strategy']['name']}' does not (drop swing=... or use "
            f"strategy=dsfl)"
        )
    from fedkd.privacy.swing import SwingSpec

    swing = SwingSpec.from_config(section)
    privacy = cfg["privacy"]["name"]
    if privacy != "none" and swing.score != "oracle" and swing.release_temperatures:
        # every mode: central would broadcast their plain mean, the mod does not noise them
        raise ConfigError(
            f"swing.score={swing.score} releases temperatures that depend on private data, "
            f"which privacy={privacy} does not noise; set swing.release_temperatures=false"
        )
    return swing


def _homogeneous(cfg: Mapping[str, Any], name: str) -> None:
    from fedkd.model_family import is_homogeneous

    if not is_homogeneous(cfg["model"], int(cfg["num_clients"])):
        raise ConfigError(
            f"strategy '{name}' averages weights and needs identical models on every client, "
            f"but model.family has {len(cfg['model']['family'])} different specs (use model=mlp)"
        )


# ---------------------------------------------------------------- the strategies
@_spec("local")
def _check_local(cfg: Mapping[str, Any]) -> None:
    """Local training only: no options."""


@_spec("fd", upload_kind="class_logits", supports_central=True)
def _check_fd(cfg: Mapping[str, Any]) -> None:
    p = cfg["strategy"]
    _one_of(p, "teacher", ("mean", "loo"))
    _at_least(p, "beta", 0)
    _positive(p, "temperature")
    check_loss("strategy.loss", p["loss"], "logits")
    _reducer(p, weighted=bool(p["weighted"]))
    if cfg["privacy"]["name"] == "central" and p["teacher"] == "loo":
        raise ConfigError(
            "privacy=central cannot protect strategy.teacher=loo (a different teacher per "
            "client); use teacher=mean or the client-side mod"
        )


@_spec(
    "fedmd",
    upload_kind="public_logits",
    needs_public_set=True,
    supports_central=True,
    subset_key="alignment_size",
)
def _check_fedmd(cfg: Mapping[str, Any]) -> None:
    p = cfg["strategy"]
    _subset(cfg, "alignment_size")
    check_loss("strategy.digest_loss", p["digest_loss"], "logits")
    _reducer(p)
    check_budget_and_optimizer(p["distill"], "strategy.distill")
    _at_least(p, "pretrain_epochs", 0, "int")
    _at_least(p, "ce_weight", 0)


@_spec(
    "dsfl",
    upload_kind="public_logits",
    upload_space="probs",
    needs_public_set=True,
    supports_central=True,
    supports_swing=True,
    subset_key="open_size",
)
def _check_dsfl(cfg: Mapping[str, Any]) -> None:
    p = cfg["strategy"]
    _subset(cfg, "open_size")
    _one_of(p, "aggregation", ("era", "sa"))
    _one_of(p, "era_on", ("probs", "logits"))
    if p["aggregation"] == "era":
        t = p["era_temperature"]
        if not _number(t) or not 0 < t < 1:
            raise ConfigError(
                f"strategy.era_temperature must be in (0, 1): ERA sharpens (got {t!r}), "
                f"e.g. strategy.era_temperature=0.1"
            )
    if p["era_on"] == "logits" and cfg["privacy"]["name"] == "subteachers":
        raise ConfigError("privacy=subteachers releases probabilities: use strategy.era_on=probs")
    check_loss("strategy.distill_loss", p["distill_loss"], "probs")
    _reducer(p)
    check_budget_and_optimizer(p["distill"], "strategy.distill")
    _at_least(p, "ce_weight", 0)
    _bool(p, "server_model")
    _bool(p, "hard_targets")
    if swing_of(cfg, SPECS["dsfl"]) is not None and p["era_on"] != "probs":
        raise ConfigError("swing releases probabilities: it needs strategy.era_on=probs")


@_spec(
    "knfu",
    upload_kind="public_logits",
    upload_space="probs",
    needs_public_set=True,
    personalised=True,
    supports_swing=True,
)
def _check_knfu(cfg: Mapping[str, Any]) -> None:
    p = cfg["strategy"]
    _positive(p, "temperature")
    check_budget_and_optimizer(p["distill"], "strategy.distill")
    _at_least(p, "ce_weight", 0)
    from fedkd.fusion.knfu import DIVERGENCES, GATINGS, divergence_matrix, fusion_weights

    _one_of(p, "divergence", DIVERGENCES)
    _at_least(p, "beta", 0)
    _one_of(p, "gating", GATINGS)
    gating, threshold, top_m = p["gating"], p["threshold"], p["top_m"]
    if threshold is not None and gating != "threshold":
        raise ConfigError(
            f"strategy.threshold={threshold} is used only with strategy.gating=threshold "
            f"(gating is {gating}): set strategy.gating=threshold or strategy.threshold=null"
        )
    if top_m is not None and gating != "top_m":
        raise ConfigError(
            f"strategy.top_m={top_m} is used only with strategy.gating=top_m "
            f"(gating is {gating}): set strategy.gating=top_m or strategy.top_m=null"
        )
    if gating == "threshold":
        _at_least(p, "threshold", 0)
    if gating == "top_m":
        _at_least(p, "top_m", 1, "int")
    # and the fusion functions' own checks, on a toy input
    import numpy as np

    toy = np.full((2, 1, 2), 0.5)
    fusion_weights(
        divergence_matrix(toy, p["divergence"]), float(p["beta"]), gating, threshold, top_m
    )
    swing_of(cfg, SPECS["knfu"])


@_spec("fedproto", upload_kind="prototypes", supports_central=True)
def _check_fedproto(cfg: Mapping[str, Any]) -> None:
    p = cfg["strategy"]
    _at_least(p, "lambda", 0)
    check_loss("strategy.loss", p["loss"], "features")
    _reducer(p, weighted=bool(p["weighted"]))


@_spec("fedavg", upload_kind="model_weights", homogeneous_only=True)
def _check_fedavg(cfg: Mapping[str, Any]) -> None:
    _homogeneous(cfg, "fedavg")


@_spec("feddf", upload_kind="model_weights", needs_public_set=True)
def _check_feddf(cfg: Mapping[str, Any]) -> None:
    p = cfg["strategy"]
    if not _number(cfg["split"]["server_val_per_class"]) or (
        int(cfg["split"]["server_val_per_class"]) < 1
    ):
        raise ConfigError(
            "feddf early-stops on a labelled server validation split: set "
            "split.server_val_per_class >= 1 (e.g. split.server_val_per_class=5)"
        )
    for key in ("max_steps", "batch_size", "eval_every", "patience"):
        _at_least(p, key, 1, "int")
    _positive(p, "lr")
    _positive(p, "temperature")


FEDKA_METHODS = ("source", "dann", "fedka", "mmd")
FEDKA_BROADCASTS = ("finetuned", "fedavg")
FEDKA_RAMP_ON = ("loss", "lr")
FEDKA_MMD_ACCUMULATE = ("sum", "official")


@_spec("fedka", upload_kind="model_weights", needs_public_set=True, homogeneous_only=True)
def _check_fedka(cfg: Mapping[str, Any]) -> None:
    _homogeneous(cfg, "fedka")
    p = cfg["strategy"]
    _one_of(p, "method", FEDKA_METHODS)
    _one_of(p, "broadcast", FEDKA_BROADCASTS)
    _one_of(p, "vote_ramp_on", FEDKA_RAMP_ON)
    _one_of(p, "mmd_accumulate", FEDKA_MMD_ACCUMULATE)
    for key, low in (("batches", 1), ("batch_size", 2), ("vote_batches", 0), ("mmd_every", 1)):
        _at_least(p, key, low, "int")
    _positive(p, "gamma")
    _bool(p, "voting_enabled")
    from fedkd.privacy.label_release import LabelVoting

    LabelVoting.from_config(p["voting"])


@_spec("vote", upload_kind="votes", needs_public_set=True, subset_key="query_size")
def _check_vote(cfg: Mapping[str, Any]) -> None:
    p = cfg["strategy"]
    _subset(cfg, "query_size")
    _at_least(p, "top_k", 1, "int")
    check_loss("strategy.distill_loss", p["distill_loss"], "probs")
    from fedkd.privacy.label_release import LabelVoting

    LabelVoting.from_config(p["voting"], votes_per_teacher=p["top_k"])
