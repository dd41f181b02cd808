"""Reference scores with no model at all, for reading a results table: what a client scores by always giving
the answer most common in its own training split (a learned label prior), and by guessing uniformly.

A personalized method that only learns each client's answer distribution reaches the majority score; one that
beats it has learned something about the inputs. Usage (same overrides as a run):

    python -m tools.yardstick budget=cpu_small scenario=snli_dir0.1 ++scenario.local_path=/data/snli seed=0
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence

from amole.compose import compose
from amole.data import ClientSplits
from amole.data.scenario import client_splits
from amole.evaluation.rouge_l import metric_name, rouge_l_f


def majority_score(splits: ClientSplits, rouge: str = "rouge_score") -> tuple[float, float | None, str]:
    """(majority-answer score, uniform-guess expectation or None for generation, metric) on the test split,
    with the Rouge-L implementation the run used (``eval.rouge``)."""
    answer = Counter(ex.target for ex in splits.train).most_common(1)[0][0]
    if splits.is_choice:
        hit = sum(ex.target == answer for ex in splits.test) / len(splits.test)
        return hit, sum(1 / len(ex.choices) for ex in splits.test) / len(splits.test), "accuracy"
    score = rouge_l_f(rouge)
    return sum(score(ex.target, answer) for ex in splits.test) / len(splits.test), None, metric_name(rouge)


def main(argv: Sequence[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    settings = compose(overrides)
    print("| client | task | metric | test n | majority answer | uniform guess |")
    print("|---|---|---|---|---|---|")
    majors, guesses = [], []
    for c in range(settings.federation.num_clients):
        splits = client_splits(settings.scenario, str(c), settings.federation.seed)
        major, guess, metric = majority_score(splits, settings.eval.rouge)
        majors.append(major)
        guesses.append(guess)
        print(f"| {c} | {splits.task} | {metric} | {len(splits.test)} | {major:.4f} | "
              f"{'–' if guess is None else f'{guess:.4f}'} |")
    known = [g for g in guesses if g is not None]
    print(f"\nmean over clients: majority answer {sum(majors) / len(majors):.4f}"
          + (f"; uniform guess {sum(known) / len(known):.4f} over the {len(known)} multiple-choice clients"
             if known else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
