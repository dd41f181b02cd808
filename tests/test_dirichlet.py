"""Dirichlet label skew: skew grows as alpha shrinks, minimum sizes, determinism, disjoint cover. Offline, fast."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from amole.data import Example, dirichlet_indices, dirichlet_partition, group_histograms

LABELS = [c for c in "abc" for _ in range(2000)]  # 3 balanced classes, 6000 examples
CLIENTS = 10


def entropy(counts: Counter) -> float:
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values() if c)


def skew(parts: list[list[int]]) -> tuple[float, float]:
    """Mean per-client label entropy (nats) and mean per-client share of its largest class."""
    hists = [Counter(LABELS[i] for i in p) for p in parts]
    return (float(np.mean([entropy(h) for h in hists])),
            float(np.mean([max(h.values()) / sum(h.values()) for h in hists])))


def test_skew_grows_as_alpha_shrinks() -> None:
    stats = {a: skew(dirichlet_indices(LABELS, CLIENTS, a, seed=3, min_samples=20)) for a in (0.1, 1.0, 100.0)}
    ent = {a: s[0] for a, s in stats.items()}
    top = {a: s[1] for a, s in stats.items()}
    assert ent[0.1] < ent[1.0] < ent[100.0]
    assert top[0.1] > top[1.0] > top[100.0]
    assert ent[100.0] > 0.97 * math.log(3) and top[100.0] < 0.4  # alpha=100 is close to IID
    assert ent[0.1] < 0.5 * math.log(3) and top[0.1] > 0.75  # alpha=0.1: a dominant label per client


@pytest.mark.parametrize("alpha", [0.05, 0.1, 1.0, 100.0])
def test_disjoint_cover_and_minimum(alpha: float) -> None:
    parts = dirichlet_indices(LABELS, CLIENTS, alpha, seed=0, min_samples=150)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(len(LABELS)))  # disjoint and covering
    assert all(p == sorted(p) for p in parts)
    assert min(len(p) for p in parts) >= 150


def test_rebalance_fallback_meets_minimum_deterministically(capsys: pytest.CaptureFixture[str]) -> None:
    # one try at alpha=0.01 essentially never gives every client 500: the deterministic repair must
    a = dirichlet_indices(LABELS, CLIENTS, 0.01, seed=1, min_samples=500, max_tries=1)
    b = dirichlet_indices(LABELS, CLIENTS, 0.01, seed=1, min_samples=500, max_tries=1)
    assert a == b and "rebalancing" in capsys.readouterr().err
    assert min(len(p) for p in a) >= 500
    assert sorted(i for p in a for i in p) == list(range(len(LABELS)))


def test_deterministic_per_seed() -> None:
    a = dirichlet_indices(LABELS, CLIENTS, 0.5, seed=7, min_samples=10)
    assert a == dirichlet_indices(LABELS, CLIENTS, 0.5, seed=7, min_samples=10)
    assert a != dirichlet_indices(LABELS, CLIENTS, 0.5, seed=8, min_samples=10)
    # the class order is by name, not by first appearance: relabelling order does not matter
    shuffled = LABELS[2000:] + LABELS[:2000]
    sizes = sorted(len(p) for p in dirichlet_indices(shuffled, CLIENTS, 0.5, seed=7, min_samples=10))
    assert sizes == sorted(len(p) for p in a)


def test_partition_of_examples_by_group() -> None:
    exs = [Example(f"p{i}", "t", group=g) for i, g in enumerate(["x", "y", "z", "w"] * 50)]
    parts = dirichlet_partition(exs, 4, 0.1, seed=0, min_samples=10)
    assert sum(len(p) for p in parts) == 200 and all(len(p) >= 10 for p in parts)
    assert {ex.prompt for p in parts for ex in p} == {ex.prompt for ex in exs}
    hists = group_histograms(parts)
    assert sum(hists, Counter()) == Counter(ex.group for ex in exs)
    other = dirichlet_partition(exs, 4, 0.1, seed=0, min_samples=10, key=lambda ex: ex.prompt[-1])
    assert sum(len(p) for p in other) == 200


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_indices(LABELS, CLIENTS, 0.0, seed=0)
    with pytest.raises(ValueError, match="min_samples"):
        dirichlet_indices(LABELS[:50], CLIENTS, 1.0, seed=0, min_samples=6)
    with pytest.raises(ValueError, match="num_clients"):
        dirichlet_indices(LABELS, 0, 1.0, seed=0)
