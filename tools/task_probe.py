"""Which BIG-bench tasks can a model learn in a budget? A local-only probe, one task at a time, no federation.

For each task: the client's splits as a run would cut them (client 0 of a one-task scenario), the no-model
yardstick (max of the majority answer and the uniform guess), the score before any training (round 0) and after
each of ``--rounds`` rounds of the budget's local steps, each with its standard error. One model is loaded once;
every task starts from fresh adapters, so the tasks do not see each other. It chose the tasks of
``conf/scenario/bigbench_cpu.yaml`` (docs/results_notes.md):

    python -m tools.task_probe --tasks social_iqa dyck_languages -o budget=cpu_medium \\
        ++scenario.local_dir=/data/bigbench --rounds 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from amole.backbones.loader import load_base_model
from amole.client.round import ClientJob, train_local
from amole.compose import compose
from amole.data.scenario import client_splits
from amole.evaluation.evaluate import evaluate
from amole.moe import bank
from amole.moe.model import export_adapters, import_adapters, inject
from tools.yardstick import majority_score


def probe_task(model, tokenizer, settings, layers: dict, task: str, rounds: int) -> dict:
    """Yardstick and (score, SE) after 0..rounds rounds of local training on ``task``, from fresh adapters."""
    splits = client_splits(settings.scenario, "0", settings.federation.seed, task=task)
    major, uniform, metric = majority_score(splits, settings.eval.rouge)
    yardstick = max(major, uniform or 0.0)
    held = list(range(min(4, settings.adapter.num_experts)))
    payload = bank.payload(bank.create_bank(layers, settings.adapter, seed=0), {n: held for n in layers})
    site = Path(tempfile.mkdtemp(prefix="probe-"))
    scores = []
    for r in range(rounds + 1):
        start = time.perf_counter()
        if r:
            job = ClientJob(model, tokenizer, splits, settings, r, "0", site, "probe")
            train_local(job, payload, seed=r)
            payload = export_adapters(model)
        else:
            import_adapters(model, payload)
        res = evaluate(model, tokenizer, splits.test, settings.train.max_seq_len, settings.eval)
        se = res["score_se"]
        scores.append((res["score"], se))
        print(f"{task} round {r}: {metric} {res['score']:.3f} (SE {se:.3f}) yardstick {yardstick:.3f} "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
    return {"task": task, "metric": metric, "test_n": len(splits.test), "train_n": len(splits.train),
            "yardstick": yardstick, "scores": scores}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("-o", "--overrides", nargs="*", default=["budget=cpu_medium"])
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    scenario = [] if any(o.startswith("scenario=") for o in args.overrides) else ["scenario=bigbench_cpu"]
    settings = compose([*scenario, *args.overrides])
    model, tokenizer = load_base_model(settings.model)
    layers = {n: (m.in_features, m.out_features) for n, m in inject(model, settings.adapter).items()}
    rows = [probe_task(model, tokenizer, settings, layers, t, args.rounds) for t in args.tasks]
    print("| task | test n | yardstick | " + " | ".join(f"round {r}" for r in range(args.rounds + 1))
          + " | last − yardstick in SE |")
    print("|---|---|---|" + "---|" * (args.rounds + 2))
    for row in rows:
        last, se = row["scores"][-1]
        cells = " | ".join(f"{s:.2f} ± {e:.2f}" for s, e in row["scores"])
        gap = f"{(last - row['yardstick']) / se:+.1f}" if se > 0 else "– (SE 0)"
        print(f"| {row['task']} | {row['test_n']} | {row['yardstick']:.2f} | {cells} | {gap} |")
    print("JSON " + json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
