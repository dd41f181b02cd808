"""Where one client round's time goes: train / evaluate / statistics / export, with the configured model.

Runs the round's pieces in the order a client does (amole.client.round) for the given clients and prints a
table of wall and CPU seconds (CPU time of this process is the steadier figure on a shared machine; run with
OMP_NUM_THREADS=1 so idle OpenMP threads spinning do not count) and a JSON line.
It only calls functions that the code before issue 14 had too, so the same script measures an older checkout:
``PYTHONPATH=<old checkout> python tests/benchmarks/profile_round.py``.

    python tests/benchmarks/profile_round.py --clients 0 1 2 3 [-o budget=demo ...] [--ops 15]
``--ops N`` adds torch.profiler's top-N operators (self CPU time) of the whole round.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from amole.backbones.loader import load_base_model
from amole.client.round import ClientJob, embedding_batches, train_local
from amole.client.routing_stats import collect_statistics
from amole.compose import compose
from amole.data.scenario import client_splits
from amole.evaluation.evaluate import evaluate
from amole.moe import bank
from amole.moe.model import export_adapters, inject

PHASES = ("train", "evaluate", "statistics", "export")


class _Clock:
    """Wall and CPU seconds (this process, all threads) per phase: on a shared machine CPU time is the steadier."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, phase: str, fn, *args):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.wall[phase], self.cpu[phase] = time.perf_counter() - w, time.process_time() - c
        return out


def round_times(model, tokenizer, settings, client: str, held: int) -> dict[str, dict[str, float]]:
    """Wall and CPU seconds of each phase of one round of ``client`` holding ``held`` routed experts per module."""
    splits = client_splits(settings.scenario, client, settings.federation.seed)
    layers = {n: (m.in_features, m.out_features) for n, m in inject_or_get(model, settings).items()}
    experts = list(range(min(held, settings.adapter.num_experts)))
    payload = bank.payload(bank.create_bank(layers, settings.adapter, seed=0), {n: experts for n in layers})
    clock = _Clock()
    job = ClientJob(model, tokenizer, splits, settings, 1, client, Path(tempfile.mkdtemp()), "profile")
    clock("train", train_local, job, payload, 0)
    result = clock("evaluate", evaluate, model, tokenizer, splits.test, settings.train.max_seq_len, settings.eval)
    if settings.adapter.num_experts:
        clock("statistics", collect_statistics, model, embedding_batches(tokenizer, splits, settings))
    else:
        clock("statistics", lambda: None)
    clock("export", export_adapters, model)
    for d in (clock.wall, clock.cpu):
        d["round"] = sum(d[p] for p in PHASES)
    print(f"client {client} ({splits.task}, {result['metric']} {result['score']:.3f}, {len(splits.test)} test, "
          f"{len(splits.embed)} embed): " + "  ".join(f"{k} {clock.wall[k]:.2f}s wall {clock.cpu[k]:.2f}s cpu"
                                                      for k in clock.wall), flush=True)
    return {"wall": clock.wall, "cpu": clock.cpu}


_INJECTED: dict[int, dict] = {}


def inject_or_get(model, settings) -> dict:
    if id(model) not in _INJECTED:
        _INJECTED[id(model)] = inject(model, settings.adapter)
    return _INJECTED[id(model)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", nargs="+", default=["0", "1", "2", "3"])
    p.add_argument("-o", "--overrides", nargs="*", default=["budget=demo", "scenario=bigbench_demo"])
    p.add_argument("--held", type=int, default=4, help="routed experts held per module")
    p.add_argument("--ops", type=int, default=0, help="print torch.profiler's top-N operators")
    p.add_argument("--device", default=None)
    args = p.parse_args()
    settings = compose(args.overrides)
    model, tokenizer = load_base_model(settings.model, device=args.device)
    inject_or_get(model, settings)
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.ops else None
    if prof is not None:
        prof.__enter__()
    rows = [round_times(model, tokenizer, settings, c, args.held) for c in args.clients]
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))
    total = {kind: {k: sum(r[kind][k] for r in rows) for k in (*PHASES, "round")} for kind in ("wall", "cpu")}
    print("phase       wall s  share    cpu s  share")
    for k in (*PHASES, "round"):
        w, c = total["wall"][k], total["cpu"][k]
        print(f"{k:11s} {w:7.2f} {w / total['wall']['round']:6.1%} {c:8.2f} {c / total['cpu']['round']:6.1%}")
    print("JSON " + json.dumps({"clients": args.clients, "per_client": rows, "total": total}))


if __name__ == "__main__":
    main()
