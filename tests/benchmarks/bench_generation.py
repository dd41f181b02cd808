"""The evaluate phase of demo clients, generation as before (``model.generate``, ``eval.batch_size`` prompts in
input order) against ``amole.evaluation.generation`` (sorted, ``eval.gen_batch_size`` wide, finished rows leave),
side by side in one process after the same local training, with each client's scores both ways.

    python tests/benchmarks/bench_generation.py [--clients 2 3] [-o budget=demo ...] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from amole.backbones.loader import load_base_model, model_device
from amole.client.round import ClientJob, train_local
from amole.compose import compose
from amole.data import pad_id_of
from amole.data.scenario import client_splits
from amole.evaluation import evaluate as ev
from amole.evaluation import generation
from amole.moe import bank
from amole.moe.model import export_adapters, inject


@torch.no_grad()
def hf_generate_ids(model, tokenizer, prompts, max_len, max_new_tokens, decoding="greedy", batch_size=8):
    """The previous path: model.generate on ``batch_size`` prompts at a time, in input order."""
    pad, eos, out = pad_id_of(tokenizer), tokenizer.eos_token_id, []
    ids = generation.prompt_ids(tokenizer, prompts, max_len, max_new_tokens)
    for s in range(0, len(ids), batch_size):
        x, mask = generation.left_pad(ids[s : s + batch_size], pad)
        dev = model_device(model)
        new = model.generate(input_ids=x.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens,
                             pad_token_id=pad, do_sample=False, eos_token_id=eos)[:, x.shape[1]:].tolist()
        out += [r[: r.index(eos) + 1] if eos in r else r for r in new]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", nargs="+", default=["0", "1", "2", "3"])
    p.add_argument("-o", "--overrides", nargs="*", default=["budget=demo"])
    p.add_argument("--steps", type=int, default=30, help="local steps before scoring (answers end earlier)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    settings = compose([*args.overrides, f"train.steps={args.steps}"])
    model, tok = load_base_model(settings.model)
    layers = {n: (m.in_features, m.out_features) for n, m in inject(model, settings.adapter).items()}
    start = export_adapters(model)
    held = list(range(min(4, settings.adapter.num_experts)))
    totals = {"before": 0.0, "now": 0.0}
    for client in args.clients:
        splits = client_splits(settings.scenario, client, settings.federation.seed)
        payload = bank.payload(bank.create_bank(layers, settings.adapter, seed=0), {n: held for n in layers}) \
            if settings.adapter.num_experts else start
        train_local(ClientJob(model, tok, splits, settings, 1, client, Path(tempfile.mkdtemp()), "bench"), payload, 0)
        model.eval()
        times: dict[str, list[float]] = {"before": [], "now": []}
        scores = {}
        for _ in range(args.repeats):
            before = lambda *a: hf_generate_ids(*a[:6], batch_size=settings.eval.batch_size)  # noqa: E731
            for name, fn in (("before", before), ("now", generation.generate_ids)):
                ev.generate_ids = fn
                t = time.perf_counter()
                scores[name] = ev.evaluate(model, tok, splits.test, settings.train.max_seq_len, settings.eval)
                times[name].append(time.perf_counter() - t)
        ev.generate_ids = generation.generate_ids
        best = {k: min(v) for k, v in times.items()}
        for k in totals:
            totals[k] += best[k]
        same = scores["before"]["score"] == scores["now"]["score"]
        print(f"client {client} ({splits.task}, {scores['now']['metric']}, {len(splits.test)} test): evaluate "
              f"{best['before']:.2f} s before, {best['now']:.2f} s now ({best['before'] / best['now']:.2f}x); score "
              f"{scores['before']['score']:.4f} before, {scores['now']['score']:.4f} now"
              f"{' (identical)' if same else ' (DIFFERENT)'}", flush=True)
    print(f"evaluate phase, {len(args.clients)} clients: {totals['before']:.1f} s before, {totals['now']:.1f} s now: "
          f"{totals['before'] / totals['now']:.2f}x faster")
    print("JSON " + json.dumps(totals))


if __name__ == "__main__":
    main()
