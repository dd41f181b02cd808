"""Reference scores with no model at all, for reading a results table: what a client scores by always giving
the answer most common in its own training split (a learned label prior), and by guessing uniformly.

A personalized method that only learns each client's answer distribution reaches the majority score; one that
beats it has learned something about the inputs. Usage (same overrides as a run):

    python -m tools.yardstick budget=cpu_small scenario=snli_dir0.1 ++scenario.local_path=/data/snli seed=0
    python -m tools.yardstick --out docs/runs/medium/yardstick budget=cpu_medium scenario=bigbench_cpu seed=0

With ``--out`` the cells are also kept in a file named by a key of the settings that decide them (the scenario,
the Rouge-L implementation, the seed), which ``tools.results`` uses for runs of those settings: a results table
keeps its yardstick on a machine without the run's data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amole.compose import compose
from amole.config import Settings
from amole.data import ClientSplits
from amole.data.scenario import client_splits
from amole.evaluation.rouge_l import metric_name, rouge_l_f
from amole.util.atomic import write_text
from tools.archive import reference_scores
from tools.config_keys import significant

__all__ = ["FILE_PREFIX", "client_cell", "load_yardsticks", "majority_score", "yardstick_key"]

FILE_PREFIX = "yardstick_"
# Where the data sits on a machine does not decide a client's splits.
_MACHINE_KEYS = {"scenario": {"local_path", "local_dir", "cache_dir"}}


def majority_score(splits: ClientSplits, rouge: str = "rouge_score") -> tuple[float, float | None, str]:
    """(majority-answer score, uniform-guess expectation or None for generation, metric) on the test split,
    with the Rouge-L implementation the run used (``eval.rouge``)."""
    answer = Counter(ex.target for ex in splits.train).most_common(1)[0][0]
    if splits.is_choice:
        hit = sum(ex.target == answer for ex in splits.test) / len(splits.test)
        return hit, sum(1 / len(ex.choices) for ex in splits.test) / len(splits.test), "accuracy"
    score = rouge_l_f(rouge)
    return sum(score(ex.target, answer) for ex in splits.test) / len(splits.test), None, metric_name(rouge)


def client_cell(splits: ClientSplits, rouge: str) -> dict[str, Any]:
    """One client's yardstick: task, metric, test n, majority, uniform (None for generation) and the better."""
    if not splits.train or not splits.test:
        raise ValueError(f"{splits.task} has {len(splits.train)} training and {len(splits.test)} test examples")
    majority, uniform, metric = majority_score(splits, rouge)
    return {"task": splits.task, "metric": metric, "test_n": len(splits.test), "majority": majority,
            "uniform": uniform, "yardstick": max(majority, uniform if uniform is not None else -math.inf)}


def yardstick_key(config: dict[str, Any]) -> str:
    """A short hash of what decides a yardstick, from a stored config (a Settings dict): the scenario, the
    Rouge-L implementation and the seed."""
    settings = Settings.from_dict(config).to_dict()
    kept: dict[str, Any] = significant(settings, _MACHINE_KEYS, ("scenario",))
    kept["rouge"] = settings["eval"]["rouge"]
    kept["seed"] = settings["federation"]["seed"]
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_yardsticks(dirs: Sequence[Path]) -> dict[str, dict[str, dict[str, Any]]]:
    """key -> client -> cell, from every ``yardstick_*.json`` under ``dirs``."""
    return reference_scores(dirs, f"{FILE_PREFIX}*.json", yardstick_key)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="also keep the cells in a file in this folder (e.g. docs/runs/medium/yardstick)")
    p.add_argument("--clients", type=lambda s: s.split(","), default=None,
                   help="comma-separated client ids (0,1,3); default: every client of the scenario")
    p.add_argument("overrides", nargs="*", help="the runs' overrides (budget=..., scenario=..., seed=...)")
    args = p.parse_args(argv)
    settings = compose(args.overrides)
    seed = settings.federation.seed
    clients = args.clients or [str(c) for c in range(settings.federation.num_clients)]
    cells = {c: client_cell(client_splits(settings.scenario, c, seed), settings.eval.rouge) for c in clients}
    print("| client | task | metric | test n | majority answer | uniform guess |")
    print("|---|---|---|---|---|---|")
    for c, v in cells.items():
        uniform = "–" if v["uniform"] is None else f"{v['uniform']:.4f}"
        print(f"| {c} | {v['task']} | {v['metric']} | {v['test_n']} | {v['majority']:.4f} | {uniform} |")
    known = [v["uniform"] for v in cells.values() if v["uniform"] is not None]
    print(f"\nmean over clients: majority answer {sum(v['majority'] for v in cells.values()) / len(cells):.4f}"
          + (f"; uniform guess {sum(known) / len(known):.4f} over the {len(known)} multiple-choice clients"
             if known else ""))
    if args.out:
        key = yardstick_key(settings.to_dict())
        path = Path(args.out) / f"{FILE_PREFIX}{settings.scenario.name}-s{seed}-{key}.json"
        doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"clients": {}}
        doc.update(key=key, scenario=settings.scenario.name, seed=seed, rouge=settings.eval.rouge,
                   config=settings.to_dict(), host={"machine": platform.machine(), "python": platform.python_version()})
        doc["clients"].update(cells)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(doc, indent=1, default=str) + "\n")
        print(f"kept in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
