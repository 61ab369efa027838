"""Tests for the multi-domain digits, leave-one-domain-out split and domain partitioner."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import default_cfg, filled, section

from fedkd.data import DATASETS, PARTITIONERS, FederatedData, SourceData, build_federated_data
from fedkd.data.domains import DOMAIN_NAMES, stratified_shares
from fedkd.data.types import DOMAIN_NAMES_KEY, DOMAINS_KEY
from fedkd.errors import ConfigError, DataError

DD = section("dataset", "digits_domains")


def run_cfg(dataset: dict[str, Any], partition: dict[str, Any], **over: Any) -> dict[str, Any]:
    """The composed config with these dataset and partition keys (the rest from configs/)."""
    cfg = default_cfg(seed=0, num_clients=5)
    cfg["dataset"], cfg["partition"] = filled("dataset", dataset), filled("partition", partition)
    cfg["split"].update(over.pop("split", {}))
    cfg.update(over)
    return cfg


def rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x}


@pytest.fixture(scope="module")
def src() -> SourceData:
    return DATASETS.get("digits_domains")(DD, 0)


@pytest.fixture(scope="module")
def lodo() -> FederatedData:
    """Leave-one-domain-out on 'inverted', one client per source domain."""
    return build_federated_data(
        run_cfg(DD, {"name": "domain"}, split={"target_domain": "inverted"})
    )


# ------------------------------------------------------------------ dataset


def test_domains_shapes_ranges(src: SourceData) -> None:
    assert src.domain_names == DOMAIN_NAMES and len(DOMAIN_NAMES) >= 5
    assert src.x.shape == (1797, 1, 8, 8) and src.x.dtype == np.float32
    assert src.y.shape == (1797,) and src.y.dtype == np.int64
    assert src.domains is not None and src.domains.dtype == np.int64
    assert src.num_classes == 10 and src.input_shape == (1, 8, 8) and src.test is None
    sizes = np.bincount(src.domains, minlength=len(DOMAIN_NAMES))
    assert sizes.sum() == 1797 and sizes.max() - sizes.min() <= 1
    for d, name in enumerate(DOMAIN_NAMES):
        xd, yd = src.x[src.domains == d], src.y[src.domains == d]
        assert xd.min() >= 0.0 and xd.max() <= 1.0, name
        counts = np.bincount(yd, minlength=10)
        assert counts.min() >= 25, name  # class-stratified share: ~30 per class


def test_domains_deterministic_and_seeded(src: SourceData) -> None:
    load = DATASETS.get("digits_domains")
    again, other = load(DD, 0), load(DD, 1)
    assert np.array_equal(src.x, again.x) and np.array_equal(src.y, again.y)
    assert np.array_equal(src.domains, again.domains)
    assert not np.array_equal(src.y, other.y)  # another seed, other shares
    # dataset.seed overrides the run seed
    assert np.array_equal(load({**DD, "seed": 3}, 0).x, load({**DD, "seed": 3}, 7).x)


def test_domains_differ(src: SourceData) -> None:
    assert src.domains is not None
    means = np.stack([src.x[src.domains == d].mean(0).ravel() for d in range(len(DOMAIN_NAMES))])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    off_diag = dist[~np.eye(len(DOMAIN_NAMES), dtype=bool)]
    assert off_diag.min() > 0.3, dist  # every pair of domains has clearly different mean images
    inverted = src.x[src.domains == DOMAIN_NAMES.index("inverted")]
    original = src.x[src.domains == DOMAIN_NAMES.index("original")]
    assert inverted.mean() > 0.6 > 0.4 > original.mean()


def test_domains_transforms_on_same_images() -> None:
    """disjoint=false: every domain is the full set, so transforms can be compared 1:1."""
    full = DATASETS.get("digits_domains")({**DD, "disjoint": False}, 0)
    plain = DATASETS.get("digits")({"name": "digits"}, 0)
    assert full.x.shape == (1797 * len(DOMAIN_NAMES), 1, 8, 8)
    assert full.domains is not None
    by = {n: full.x[full.domains == d] for d, n in enumerate(DOMAIN_NAMES)}
    assert np.array_equal(by["original"], plain.x)
    np.testing.assert_allclose(by["inverted"], 1.0 - plain.x, atol=1e-6)
    noise = by["noisy"] - plain.x
    assert 0.1 < float(noise.std()) < 0.3  # std 0.25, reduced by the clipping
    for name in ("rotated", "blurred", "scaled"):
        assert np.abs(by[name] - plain.x).mean() > 0.05, name
    assert all(np.array_equal(full.y[full.domains == d], plain.y) for d in range(6))


def test_domains_disjoint_shares(src: SourceData) -> None:
    plain = DATASETS.get("digits")({"name": "digits"}, 0)
    shares = stratified_shares(plain.y, len(DOMAIN_NAMES), 0)
    flat = np.concatenate(shares)
    assert len(flat) == len(plain.y) == len(np.unique(flat))  # disjoint and complete
    per_class = np.stack([np.bincount(plain.y[s], minlength=10) for s in shares])
    assert (per_class.max(0) - per_class.min(0)).max() <= 1
    # each domain is exactly its share of the base images: no image is in two domains
    assert src.domains is not None
    for d, name in enumerate(DOMAIN_NAMES):
        assert np.array_equal(src.y[src.domains == d], plain.y[shares[d]]), name
    orig = src.x[src.domains == DOMAIN_NAMES.index("original")]
    inv = src.x[src.domains == DOMAIN_NAMES.index("inverted")]
    assert np.array_equal(orig, plain.x[shares[DOMAIN_NAMES.index("original")]])
    np.testing.assert_allclose(
        1.0 - inv, plain.x[shares[DOMAIN_NAMES.index("inverted")]], atol=1e-6
    )


def test_domains_selection_and_errors() -> None:
    load = DATASETS.get("digits_domains")
    sub = load({**DD, "domains": ["noisy", "original"]}, 0)
    assert sub.domain_names == ("noisy", "original") and sub.domains is not None
    assert set(np.bincount(sub.domains)) == {898, 899}
    # a domain's pixels do not depend on which other domains are selected (the noise stream
    # is keyed by the domain), only its share does
    alone = load({**DD, "domains": ["noisy"], "disjoint": False}, 0)
    mixed = load({**DD, "domains": ["original", "noisy"], "disjoint": False}, 0)
    assert mixed.domains is not None
    assert np.array_equal(alone.x, mixed.x[mixed.domains == 1])
    for bad, key in [
        (["nope"], "unknown domain 'nope'"),
        ([], "non-empty list"),
        ("original", "non-empty list"),
        (["original", "original"], "twice"),
    ]:
        with pytest.raises(ConfigError, match=f"dataset.domains.*{key}"):
            load({**DD, "domains": bad}, 0)
    with pytest.raises(ConfigError, match="dataset.noise_std"):
        load({**DD, "noise_std": -1}, 0)
    with pytest.raises(ConfigError, match="dataset.disjoint"):
        load({**DD, "disjoint": "yes"}, 0)


# ------------------------------------------------------------------ leave-one-domain-out


def test_lodo_public_and_global_test_are_target(src: SourceData, lodo: FederatedData) -> None:
    assert src.domains is not None
    t = src.domains == DOMAIN_NAMES.index("inverted")
    assert lodo.target_domain == "inverted"
    assert np.array_equal(lodo.public_x, src.x[t])
    assert np.array_equal(lodo.global_test.x, src.x[t])
    assert np.array_equal(lodo.global_test.y, src.y[t])
    assert lodo.public_x.ndim == 4  # inputs only: no labels travel with the public set


def test_lodo_clients_hold_only_source_domains(src: SourceData, lodo: FederatedData) -> None:
    assert src.domains is not None
    target = rows(lodo.public_x)
    sources = rows(src.x[src.domains != DOMAIN_NAMES.index("inverted")])
    seen: set[bytes] = set()
    total = 0
    for c in lodo.clients:
        for part in (c.train, c.test):
            r = rows(part.x)
            assert not r & target
            assert r <= sources
            seen |= r
            total += len(part)
    assert total == int((src.domains != DOMAIN_NAMES.index("inverted")).sum())  # all used
    assert lodo.client_domains == ["original", "rotated", "noisy", "blurred", "scaled"]


def test_lodo_ignores_test_and_public_options(lodo: FederatedData) -> None:
    split = {"target_domain": "inverted", "global_test_per_class": 5, "public_fraction": 0.5}
    other = build_federated_data(run_cfg(DD, {"name": "domain"}, split=split))
    assert np.array_equal(other.public_x, lodo.public_x)
    assert np.array_equal(other.global_test.y, lodo.global_test.y)
    assert all(
        np.array_equal(a.train.x, b.train.x)
        for a, b in zip(other.clients, lodo.clients, strict=True)
    )


def test_lodo_server_val_from_source_pool(src: SourceData) -> None:
    split = {"target_domain": "rotated", "server_val_per_class": 3}
    fd = build_federated_data(run_cfg(DD, {"name": "domain"}, split=split))
    assert fd.server_val is not None and len(fd.server_val) == 30
    assert not rows(fd.server_val.x) & rows(fd.public_x)
    used = len(fd.server_val) + sum(len(c.train) + len(c.test) for c in fd.clients)
    assert used + len(fd.public_x) == 1797


def test_lodo_with_other_partitioner(src: SourceData) -> None:
    fd = build_federated_data(
        run_cfg(DD, {"name": "iid"}, num_clients=4, split={"target_domain": "noisy"})
    )
    assert not any(rows(c.train.x) & rows(fd.public_x) for c in fd.clients)
    assert fd.client_domains is not None
    assert all("noisy" not in name.split("+") for name in fd.client_domains)
    assert all("+" in name for name in fd.client_domains)  # iid mixes the source domains


def test_lodo_errors() -> None:
    with pytest.raises(ConfigError, match="split.target_domain='inverted'.*dataset 'digits'"):
        build_federated_data(
            run_cfg({"name": "digits"}, {"name": "iid"}, split={"target_domain": "inverted"})
        )
    with pytest.raises(ConfigError, match="split.target_domain='foo'.*domains: original"):
        build_federated_data(run_cfg(DD, {"name": "iid"}, split={"target_domain": "foo"}))
    with pytest.raises(ConfigError, match="split.target_domain.*no source domain"):
        one = {**DD, "domains": ["original"]}
        build_federated_data(run_cfg(one, {"name": "iid"}, split={"target_domain": "original"}))
    with pytest.raises(ConfigError, match="split.target_domain must be"):
        build_federated_data(run_cfg(DD, {"name": "iid"}, split={"target_domain": 3}))


def test_target_domain_null_is_default_behaviour() -> None:
    part = {"name": "dirichlet", "alpha": 0.5}
    base = build_federated_data(run_cfg({"name": "digits"}, part, num_clients=10))
    same = build_federated_data(
        run_cfg({"name": "digits"}, part, num_clients=10, split={"target_domain": None})
    )
    assert np.array_equal(base.public_x, same.public_x)
    assert np.array_equal(base.global_test.y, same.global_test.y)
    assert base.client_domains is None and base.target_domain is None
    # a domain dataset without a target domain: pooled, usual balanced global test
    pooled = build_federated_data(run_cfg(DD, {"name": "iid"}))
    assert len(pooled.global_test) == 300 and pooled.target_domain is None


# ------------------------------------------------------------------ domain partitioner


def test_domain_partitioner_round_robin_iid() -> None:
    labels = np.arange(120) % 10
    ids = np.repeat(np.array([0, 2, 5]), 40)  # three source domains (ids need not be 0..D-1)
    cfg = {DOMAINS_KEY: ids, DOMAIN_NAMES_KEY: tuple("abcdef")}
    parts = PARTITIONERS.get("domain")(labels, 7, 0, cfg)
    assert len(parts) == 7 and all(p.dtype == np.int64 for p in parts)
    flat = np.concatenate(parts)
    assert np.array_equal(np.sort(flat), np.arange(120))  # disjoint and complete
    for k, p in enumerate(parts):
        assert set(ids[p]) == {[0, 2, 5][k % 3]}  # exactly one domain, round-robin
    # domain 0 has clients 0, 3, 6: an even iid split
    assert sorted(len(parts[k]) for k in (0, 3, 6)) == [13, 13, 14]
    again = PARTITIONERS.get("domain")(labels, 7, 0, cfg)
    other = PARTITIONERS.get("domain")(labels, 7, 1, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_domain_partitioner_errors() -> None:
    labels = np.arange(60) % 10
    cfg = {DOMAINS_KEY: np.repeat(np.arange(3), 20), DOMAIN_NAMES_KEY: ("a", "b", "c")}
    with pytest.raises(DataError, match=r"2 clients < 3 source domains \(a, b, c\)"):
        PARTITIONERS.get("domain")(labels, 2, 0, cfg)
    with pytest.raises(ConfigError, match="partition=domain needs a dataset with domains"):
        PARTITIONERS.get("domain")(labels, 2, 0, {})
    with pytest.raises(ConfigError, match="partition=domain needs a dataset with domains"):
        build_federated_data(run_cfg({"name": "digits"}, {"name": "domain"}))
    with pytest.raises(DataError, match="4 clients < 5 source domains"):
        build_federated_data(
            run_cfg(DD, {"name": "domain"}, num_clients=4, split={"target_domain": "scaled"})
        )


def test_domain_partition_build_more_clients(src: SourceData) -> None:
    fd = build_federated_data(
        run_cfg(DD, {"name": "domain"}, num_clients=12, split={"target_domain": "original"})
    )
    names = [n for n in DOMAIN_NAMES if n != "original"]
    assert fd.client_domains == [names[k % 5] for k in range(12)]
    assert sum(len(c.train) + len(c.test) for c in fd.clients) == 1797 - len(fd.public_x)


def test_hydra_config_usage() -> None:
    from fedkd.config import check_config, compose

    cfg = compose(
        [
            "dataset=digits_domains",
            "partition=domain",
            "num_clients=5",
            "split.target_domain=inverted",
        ]
    )
    check_config(cfg)
    assert cfg["dataset"]["name"] == "digits_domains" and cfg["partition"]["name"] == "domain"
    fd = build_federated_data(cfg)
    assert fd.target_domain == "inverted" and len(fd.clients) == 5
    assert compose(["dataset=digits_domains"])["split"]["target_domain"] is None
    assert "target_domain" not in compose([])["split"]  # default run config unchanged
