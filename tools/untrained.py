"""The untrained model's score on each client's test split: how much of a run's score the backbone already had.

A run's client score mixes what the (instruct) backbone could already do with what federated training added. This
scores the frozen backbone with no adapter on the same test examples, with the same evaluation settings, so a
results table can show both (``tools.results`` picks the files up from its runs folders). Fresh adapters would
give the same outputs: every B starts at zero.

    python -m tools.untrained --out docs/runs/medium/untrained budget=cpu_medium scenario=bigbench_cpu seed=0 ...

Pass the overrides of the runs to compare with (the data, the window, the evaluation and the seed decide the
score); the file is named by a key of exactly those settings, so results matches it to runs by their stored
config. Each client is written as soon as it is scored; a rerun skips the clients already in the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from amole.backbones.loader import compute_dtype_here
from amole.compose import compose
from amole.config import Settings
from amole.util.atomic import write_text
from tools.archive import reference_scores
from tools.config_keys import significant

__all__ = ["FILE_PREFIX", "load_references", "reference_key", "score_clients"]

FILE_PREFIX = "untrained_"
# What decides an untrained score: the backbone, the data and splits, the evaluation, the window and the seed.
# Where files are on a machine does not.
# Where things are on a machine, or how fast it runs them (model.compile: equal outputs): not the score's inputs.
_MACHINE_KEYS = {"model": {"cache_dir", "compile"}, "scenario": {"local_path", "local_dir", "cache_dir"}}


def reference_key(config: dict[str, Any]) -> str:
    """A short hash of the settings that decide the untrained score, from a run's stored config (a Settings dict).

    A key set to null counts as absent (tools.config_keys): a setting added later with a null default leaves every
    key, and so every committed reference file, as it was."""
    settings = Settings.from_dict(config).to_dict()
    kept: dict[str, Any] = significant(settings, _MACHINE_KEYS, ("model", "scenario", "eval"))
    kept["max_seq_len"] = settings["train"]["max_seq_len"]
    kept["seed"] = settings["federation"]["seed"]
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reference_path(out_dir: Path, settings: Settings) -> Path:
    config = settings.to_dict()
    name = f"{FILE_PREFIX}{settings.scenario.name}-s{settings.federation.seed}-{reference_key(config)}.json"
    return Path(out_dir) / name


def score_clients(settings: Settings, clients: Iterable[str], path: Path) -> dict[str, Any]:
    """Score the backbone on each client's test split, writing ``path`` after each client; clients already in the
    file are kept as they are."""
    from amole.backbones.loader import load_base_model
    from amole.data.scenario import client_splits  # heavy imports only when scoring
    from amole.evaluation.evaluate import evaluate

    config = settings.to_dict()
    doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if doc and doc.get("key") != reference_key(config):
        raise ValueError(f"{path} holds scores for other settings (key {doc.get('key')}); move it away first")
    doc = doc or {"key": reference_key(config), "scenario": settings.scenario.name, "seed": settings.federation.seed,
                  "config": config, "host": {"machine": platform.machine(), "python": platform.python_version()},
                  "clients": {}}
    todo = [c for c in clients if c not in doc["clients"]]
    if not todo:
        return doc
    model, tokenizer = load_base_model(settings.model)
    for c in todo:
        splits = client_splits(settings.scenario, c, settings.federation.seed)
        start = time.perf_counter()
        result = evaluate(model, tokenizer, splits.test, settings.train.max_seq_len, settings.eval)
        doc["clients"][c] = {"task": splits.task, "metric": result["metric"], "score": result["score"],
                             "score_se": result["score_se"], "test_n": result["n"],
                             "seconds": time.perf_counter() - start,
                             **({"gen_tokens": result["gen_tokens"]} if "gen_tokens" in result else {})}
        write_text(path, json.dumps(doc, indent=1, default=str) + "\n")
        print(f"client {c} ({splits.task}): {result['metric']} {result['score']:.4f} ± {result['score_se']:.4f} "
              f"on {result['n']} test examples, {doc['clients'][c]['seconds']:.0f} s", flush=True)
    return doc


def load_references(dirs: Sequence[Path]) -> dict[str, dict[str, dict[str, Any]]]:
    """key -> client -> record, from every ``untrained_*.json`` under ``dirs`` (unreadable files are reported)."""
    return reference_scores(dirs, f"{FILE_PREFIX}*.json", reference_key)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the scores file (e.g. docs/runs/medium/untrained)")
    p.add_argument("--clients", type=lambda s: s.split(","), default=None,
                   help="comma-separated client ids (0,1,3); default: every client of the scenario")
    p.add_argument("overrides", nargs="*", help="the runs' overrides (budget=..., scenario=..., seed=...)")
    args = p.parse_args(argv)
    settings = compose(args.overrides)
    settings.model.compute_dtype = compute_dtype_here(settings.model)  # as tools.experiment names its runs
    clients = args.clients or [str(c) for c in range(settings.federation.num_clients)]
    path = reference_path(Path(args.out), settings)
    doc = score_clients(settings, clients, path)
    scores = [doc["clients"][c]["score"] for c in clients]
    print(f"{path}: mean over {len(scores)} clients {sum(scores) / len(scores):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
