"""Dirichlet label / category skew over clients (spec §4: alpha in {0.1, 1, 100}).

For every class (sorted by name) a vector of client proportions is drawn from Dir(alpha, ..., alpha) and that
class's examples, in a random order, are cut at the cumulative proportions. Small alpha gives each client a few
dominant classes; large alpha approaches an IID split.

Minimum size. A draw is accepted only if every client gets at least ``min_samples`` examples; otherwise all
proportions are drawn again (rejection sampling, the scheme of Hsu et al. 2019 / FedLab, so accepted
partitions follow the Dirichlet model conditioned on the minimum). Only the proportions are redrawn, which is
cheap. If ``max_tries`` draws all fail, the draw whose smallest client is largest is repaired deterministically:
while a client is short, the largest client (lowest index on ties) gives it one example of its own most
frequent class (the last such example in data order). Both steps use only ``np.random.default_rng(seed)``,
so the same (labels, num_clients, alpha, seed, min_samples) always gives the same partition, in every process.

The official FedAMoLE code's procedure (``scenario.dirichlet: paper``, :func:`dirichlet_indices_paper`) differs:
classes are taken in their integer-id order, each one's proportions are drawn, zeroed for the clients that
already hold N / num_clients examples or more and renormalised, the cuts are floored, and the whole partition is
drawn again until every client has ``min_samples`` (the official 10). The cap on full clients makes it more
balanced in size but, at small alpha, more skewed in classes than ours.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import numpy as np

from amole.data.example import Example

T = TypeVar("T")


def _class_order(labels: Sequence[Hashable]) -> list[Hashable]:
    return sorted(set(labels), key=lambda v: (type(v).__name__, str(v)))


def _counts(sizes: np.ndarray, props: np.ndarray) -> np.ndarray:
    """Examples of each class (rows) per client (columns) when cut at the cumulative proportions."""
    cuts = np.rint(np.cumsum(props, axis=1) * sizes[:, None]).astype(np.int64)
    cuts[:, -1] = sizes
    return np.diff(np.concatenate([np.zeros((len(sizes), 1), np.int64), cuts], axis=1), axis=1)


def _rebalance(counts: np.ndarray, min_samples: int) -> np.ndarray:
    """Move single examples from the largest client to the short ones until every client has the minimum."""
    counts = counts.copy()
    while True:
        totals = counts.sum(axis=0)
        short = int(np.argmin(totals))
        if totals[short] >= min_samples:
            return counts
        donor = int(np.argmax(totals))
        cls = int(np.argmax(counts[:, donor]))
        counts[cls, donor] -= 1
        counts[cls, short] += 1


def dirichlet_indices(
    labels: Sequence[Hashable],
    num_clients: int,
    alpha: float,
    seed: int,
    min_samples: int = 1,
    max_tries: int = 1000,
) -> list[list[int]]:
    """Per client, the (ascending) indices into ``labels`` it receives; disjoint, together all of them."""
    n = len(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not alpha > 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    if min_samples * num_clients > n:
        raise ValueError(f"{n} examples cannot give each of {num_clients} clients min_samples={min_samples}")
    classes = _class_order(labels)
    index_of = {c: i for i, c in enumerate(classes)}
    members: list[list[int]] = [[] for _ in classes]
    for i, label in enumerate(labels):
        members[index_of[label]].append(i)
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    rng = np.random.default_rng(seed)

    best, best_min = None, -1
    for _ in range(max(1, max_tries)):
        counts = _counts(sizes, rng.dirichlet(np.full(num_clients, float(alpha)), size=len(classes)))
        smallest = int(counts.sum(axis=0).min())
        if smallest > best_min:
            best, best_min = counts, smallest
        if smallest >= min_samples:
            break
    else:
        print(f"[amole.data] Dirichlet(alpha={alpha}): no draw in {max_tries} gave every client "
              f"{min_samples} examples (best: {best_min}); rebalancing deterministically", file=sys.stderr)
        best = _rebalance(best, min_samples)
    assert best is not None

    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for cls, idx in enumerate(members):
        order = np.asarray(idx, dtype=np.int64)[rng.permutation(len(idx))]
        for client, chunk in enumerate(np.split(order, np.cumsum(best[cls])[:-1])):
            parts[client].extend(chunk.tolist())
    return [sorted(p) for p in parts]


def dirichlet_indices_paper(
    labels: Sequence[Hashable],
    num_clients: int,
    alpha: float,
    seed: int,
    min_samples: int = 10,
    max_tries: int = 10_000,
) -> list[list[int]]:
    """The official procedure: per class (in sorted order) shuffle its members, draw Dir(alpha) proportions,
    give no share to clients already at N / num_clients, cut at floor(cumsum * class size); repeat the whole
    draw until the smallest client has ``min_samples``. Per client, the ascending indices it receives."""
    n = len(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not alpha > 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    if min_samples * num_clients > n:
        raise ValueError(f"{n} examples cannot give each of {num_clients} clients min_samples={min_samples}")
    members = [[i for i, label in enumerate(labels) if label == c] for c in _class_order(labels)]
    rng = np.random.default_rng(seed)
    for _ in range(max(1, max_tries)):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for idx in members:
            order = np.asarray(idx, dtype=np.int64)[rng.permutation(len(idx))]
            props = rng.dirichlet(np.full(num_clients, float(alpha)))
            props = props * np.array([len(p) < n / num_clients for p in parts])
            if props.sum() <= 0:  # every open client drew an underflowing share: not a valid draw, start over
                break
            cuts = (np.cumsum(props / props.sum()) * len(idx)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(order, cuts), strict=True):
                part.extend(chunk.tolist())
        else:
            if min(len(p) for p in parts) >= min_samples:
                return [sorted(p) for p in parts]
    raise ValueError(f"Dirichlet(alpha={alpha}), official procedure: no draw in {max_tries} gave each of "
                     f"{num_clients} clients {min_samples} of the {n} examples; lower min_samples or raise alpha")


def group_of(example: Example) -> str:
    return example.group


def dirichlet_partition(
    examples: Sequence[T],
    num_clients: int,
    alpha: float,
    seed: int,
    min_samples: int = 1,
    key: Callable[[T], Hashable] = group_of,  # type: ignore[assignment]
    max_tries: int = 1000,
) -> list[list[T]]:
    """Per-client lists of ``examples`` (data order kept), skewed on ``key`` (default ``Example.group``)."""
    parts = dirichlet_indices([key(ex) for ex in examples], num_clients, alpha, seed, min_samples, max_tries)
    return [[examples[i] for i in part] for part in parts]


def group_histograms(parts: Sequence[Sequence[T]], key: Callable[[T], Hashable] = group_of) -> list[Counter]:  # type: ignore[assignment]
    """Per client, how many examples of each class it holds."""
    return [Counter(key(ex) for ex in part) for part in parts]
