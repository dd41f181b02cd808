"""Per-client train / embed / eval / test splits following the paper's protocol (spec §4)."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from amole.data.bigbench import TaskSource, load_tasks
from amole.data.example import ClientSplits, Example
from amole.data.prompt import DEFAULT_TEMPLATE

CHOICE_TEST_CAP = 200
GENERATIVE_TEST_CAP = 50  # generation is evaluated by greedy decoding: expensive, so fewer samples


def _size(n: int, frac: float, cap: int | None) -> int:
    """``round(n * frac)``, at least one when the fraction is positive, at most ``cap``."""
    if frac <= 0 or n <= 0:
        return 0
    k = max(1, round(n * frac))
    return min(k, cap) if cap is not None else k


def split_client(
    examples: Sequence[Example],
    seed: int,
    eval_frac: float = 0.1,
    test_frac: float = 0.1,
    embed_frac: float = 0.05,
    eval_cap: int | None = 200,
    test_cap: int | None = None,
    embed_cap: int | None = 200,
    max_train: int | None = None,
    task: str = "",
) -> ClientSplits:
    """Shuffle once with ``seed`` and cut disjoint test, eval, embed (from what remains) and train sets.

    ``test_cap`` None means 200 for multiple-choice tasks and 50 for generative ones. ``max_train`` caps the
    training set only after the other sets are cut, so evaluation sets do not depend on it.
    """
    n = len(examples)
    if test_cap is None:
        test_cap = CHOICE_TEST_CAP if any(ex.is_choice for ex in examples) else GENERATIVE_TEST_CAP
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = _size(n, test_frac, test_cap)
    n_eval = _size(n, eval_frac, eval_cap)
    n_embed = _size(n - n_test - n_eval, embed_frac, embed_cap)
    if n - n_test - n_eval - n_embed < 1:
        raise ValueError(f"task {task!r}: {n} examples are too few for test/eval/embed/train splits")
    cuts = [n_test, n_test + n_eval, n_test + n_eval + n_embed]
    pick = [examples[i] for i in order]
    train = pick[cuts[2] :]
    return ClientSplits(
        train=train[:max_train] if max_train is not None else train,
        embed=pick[cuts[1] : cuts[2]],
        eval=pick[cuts[0] : cuts[1]],
        test=pick[: cuts[0]],
        task=task,
    )


def paper_ratios(eval_frac: float, test_frac: float, embed_frac: float) -> tuple[float, float, float, float]:
    """(train, aux, eval, test) shares as the official code derives them: eval and test are shares of the whole
    part, the aux (embedding) set is ``embed_frac`` of what remains and the rest trains."""
    rest = 1.0 - eval_frac - test_frac
    if not (eval_frac >= 0 and test_frac >= 0 and rest > 0 and 0 <= embed_frac < 1):
        raise ValueError(f"split fractions eval={eval_frac}, test={test_frac}, embed={embed_frac} leave no "
                         "training set")
    return rest * (1 - embed_frac), rest * embed_frac, eval_frac, test_frac


def split_client_paper(
    examples: Sequence[Example],
    seed: int,
    ratios: Sequence[float],
    eval_cap: int | None = 200,
    test_cap: int | None = None,
    embed_cap: int | None = 200,
    max_train: int | None = None,
    task: str = "",
) -> ClientSplits:
    """The official cut: shuffle once with ``seed``, then contiguous train / aux / eval / test blocks between
    ``floor(n * cumulative ratio)`` bounds; aux, eval and test keep their first ``cap`` examples (test: 200 for
    multiple choice, 50 for generation when ``test_cap`` is None) and the training set is not capped here."""
    n = len(examples)
    if test_cap is None:
        test_cap = CHOICE_TEST_CAP if any(ex.is_choice for ex in examples) else GENERATIVE_TEST_CAP
    order = list(range(n))
    random.Random(seed).shuffle(order)
    bounds, acc = [0], 0.0
    for ratio in ratios[:-1]:
        acc += ratio
        bounds.append(int(n * acc))
    bounds.append(n)  # the last block ends at n (float noise in the ratios' sum must not drop an example)
    train, aux, eval_, test = ([examples[i] for i in order[lo:hi]] for lo, hi in pairwise(bounds))
    if not train:
        raise ValueError(f"task {task!r}: {n} examples are too few for the official train/aux/eval/test ratios "
                         f"{ratios}")
    return ClientSplits(
        train=train[:max_train] if max_train is not None else train,
        embed=aux[:embed_cap] if embed_cap is not None else aux,
        eval=eval_[:eval_cap] if eval_cap is not None else eval_,
        test=test[:test_cap],
        task=task,
    )


def task_per_client(
    tasks: Sequence[str],
    source: TaskSource,
    seed: int,
    cache_dir: str | os.PathLike[str] | None = None,
    template: str = DEFAULT_TEMPLATE,
    **caps: Any,
) -> list[ClientSplits]:
    """One task per client (the BIG-bench / Natural-Instructions scenario); client i uses seed seed*1000+i.

    ``caps`` go to :func:`split_client` (fractions, caps, ``max_train``). A task listed twice gives two
    clients with differently shuffled splits of the same data. ``template`` applies to file sources only.
    """
    data = load_tasks(tasks, source, cache_dir, **({} if callable(source) else {"template": template}))
    return [split_client(data[task], seed * 1000 + i, task=task, **caps) for i, task in enumerate(tasks)]
