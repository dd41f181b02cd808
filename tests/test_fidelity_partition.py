"""scenario.dirichlet / splits "paper": the official partition procedure and split cuts on fixed inputs.

``official_partition`` below is a small reimplementation written from the procedure's description (per class
in id order: shuffle the class, draw Dir(alpha) proportions, zero those of clients already holding N / C,
renormalise, cut at floor(cumsum * class size); redraw everything until the smallest client has 10), using the
same random generator calls in the same order, so per-client sizes must agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from amole.config import ScenarioConfig
from amole.data.dirichlet import dirichlet_indices_paper
from amole.data.example import Example
from amole.data.procedures import split_fractions
from amole.data.splits import paper_ratios, split_client_paper


def official_partition(y: np.ndarray, clients: int, alpha: float, seed: int, least: int = 10) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    n = len(y)
    while True:
        parts: list[list[int]] = [[] for _ in range(clients)]
        for k in np.unique(y):
            members = np.flatnonzero(y == k)
            members = members[rng.permutation(len(members))]
            share = rng.dirichlet([alpha] * clients)
            share = np.where([len(p) < n / clients for p in parts], share, 0.0)
            share = share / share.sum()
            bounds = [int(b) for b in np.cumsum(share) * len(members)][:-1]
            for part, piece in zip(parts, np.split(members, bounds), strict=True):
                part += piece.tolist()
        if min(map(len, parts)) >= least:
            return [sorted(p) for p in parts]


def labels(seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(8, size=3000, p=[0.25, 0.15, 0.14, 0.12, 0.1, 0.1, 0.08, 0.06])


@pytest.mark.parametrize(("alpha", "seed"), [(0.1, 0), (0.1, 3), (1.0, 1), (100.0, 2)])
def test_sizes_follow_the_official_procedure(alpha: float, seed: int) -> None:
    y = labels()
    ours = dirichlet_indices_paper(y.tolist(), 10, alpha, seed)
    want = official_partition(y, 10, alpha, seed)
    assert [len(p) for p in ours] == [len(p) for p in want]
    assert ours == want
    assert min(len(p) for p in ours) >= 10
    assert sorted(i for p in ours for i in p) == list(range(len(y)))


def test_fixed_seed_sizes() -> None:
    """Pinned: the per-client sizes of one fixed draw (any change to the procedure or its RNG use shows)."""
    sizes = [len(p) for p in dirichlet_indices_paper(labels().tolist(), 10, 0.1, 0)]
    assert sizes == [418, 55, 381, 242, 108, 198, 448, 459, 264, 427]
    assert sum(sizes) == 3000 and min(sizes) >= 10


@pytest.mark.parametrize("seed", range(5))
def test_full_clients_get_no_share_of_later_classes(seed: int) -> None:
    """The cap, checked on the output alone: once a client holds N / C examples it gets no later class."""
    y = labels()
    parts = dirichlet_indices_paper(y.tolist(), 10, 0.1, seed)
    held = np.zeros(10)
    for k in range(8):
        got = np.array([sum(1 for i in p if y[i] == k) for p in parts])
        assert not got[held >= len(y) / 10].any()
        held += got


def test_minimum_is_a_redraw_not_a_repair() -> None:
    y = labels()
    parts = dirichlet_indices_paper(y.tolist(), 10, 0.05, 11, min_samples=10)
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(ValueError, match="min_samples"):
        dirichlet_indices_paper(y.tolist(), 10, 0.1, 0, min_samples=301)


def test_official_cuts_and_caps() -> None:
    """Dolly / NI: eval and test 10 % each, aux 5 % of the rest: cut at floor(n * cumulative ratio)."""
    examples = [Example(f"p{i}", f"t{i}") for i in range(1003)]
    ratios = paper_ratios(0.1, 0.1, 0.05)
    assert ratios == pytest.approx((0.76, 0.04, 0.1, 0.1))
    s = split_client_paper(examples, seed=0, ratios=ratios, eval_cap=200, test_cap=None, embed_cap=200)
    # bounds int(1003 * .76) = 762, int(1003 * .8) = 802, int(1003 * .9) = 902, int(1003 * 1.0) = 1003
    assert (len(s.train), len(s.embed), len(s.eval)) == (762, 40, 100)
    assert len(s.test) == 50  # generation: the first 50 of the 101 test examples
    everything = s.train + s.embed + s.eval
    assert len({ex.prompt for ex in everything + s.test}) == len(everything) + 50


def test_snli_paper_ratios() -> None:
    """SNLI: eval / test are the validation / test splits' shares of train+validation+test (10,000 / 570,152)."""
    snli = ScenarioConfig(source="snli", partition="dirichlet", splits="paper")
    ratios = paper_ratios(*split_fractions(snli), snli.embed_frac)
    assert ratios == pytest.approx((0.9167, 0.0482, 0.01754, 0.01754), abs=1e-4)
    assert split_fractions(ScenarioConfig(source="snli", partition="dirichlet")) == (0.1, 0.1)  # ours
