"""The server's side of a round alone, at scale: 100 clients x 30 routed experts per module x the 32 adapted modules
of Llama-3.2-1B (q_proj 2048->2048 and v_proj 2048->512 in 16 layers), rank 8. No model and no clients: uploads are
the payloads each client was sent, perturbed; routing statistics are random. Per round it times what the strategy
does between sending and the next send: the RSEA plan, the reply checks, the bound on one site's influence, the
per-expert averages, the routing codes and the run report; and it reports the process's peak memory.

    .venv/bin/python tests/benchmarks/bench_server.py [--clients 100] [--experts 30] [--rounds 2]

Last line: `server: clients=<C> experts=<N> modules=<M> s_per_round=<s> peak_gb=<GB>`.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from amole.config import AdapterConfig, AssignConfig  # noqa: E402
from amole.moe import bank as banks  # noqa: E402
from amole.moe.keys import expert_stat_key, router_stat_key  # noqa: E402
from amole.server.aggregate import aggregate, outside_bound  # noqa: E402
from amole.server.planner import plan  # noqa: E402
from amole.server.routing_codes import embedding_matrices  # noqa: E402
from server_app.replies import check_upload  # noqa: E402
from server_app.run_report import RunReport  # noqa: E402


def llama_1b_shapes() -> dict[str, tuple[int, int]]:
    """The 32 modules FedAMoLE adapts in Llama-3.2-1B (hidden 2048, 8 KV heads of 64)."""
    out = {}
    for layer in range(16):
        out[f"model.layers.{layer}.self_attn.q_proj"] = (2048, 2048)
        out[f"model.layers.{layer}.self_attn.v_proj"] = (2048, 512)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--experts", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--per-expert", type=int, default=8, help="K: clients each expert picks")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    r, N, C = 8, args.experts, args.clients
    cfg = AssignConfig(clients_per_expert=args.per_expert, min_experts=2, max_experts=8)
    bank = banks.create_bank(llama_1b_shapes(), AdapterConfig(r=r, num_experts=N), seed=0)
    modules = banks.modules_of(bank)
    clients = [str(c) for c in range(C)]
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    expert_codes, client_codes = None, {c: {m: rng.standard_normal(r) for m in modules} for c in clients}
    previous = None
    times: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, RunReport(Path(tmp), tensorboard=False) as report:
        metrics: dict = {"run": {"name": "bench-server", "num_rounds": args.rounds, "num_clients": C}, "rounds": []}
        for n in range(1, args.rounds + 1):
            t = {"start": time.perf_counter()}
            used = plan(cfg, clients, modules, N, r, previous, expert_codes, client_codes, rng)
            t["plan"] = time.perf_counter()
            sent = {c: banks.payload(bank, used.held(c)) for c in clients}
            uploads = {c: {k: v + 1e-3 * torch.randn(v.shape, generator=gen) for k, v in s.items()}
                       for c, s in sent.items()}
            stats = {c: {**{router_stat_key(m): torch.randn(r, generator=gen) for m in modules},
                         **{expert_stat_key(m, i): torch.randn(r, generator=gen)
                            for m, ids in used.held(c).items() for i in ids}} for c in clients}
            t["made"] = time.perf_counter()  # building the fake replies is not the server's work
            for c in clients:
                check_upload(c, sent[c], uploads[c], stats[c], r)
            left_out = outside_bound(bank, uploads, None)
            t["checked"] = time.perf_counter()
            order = [c for c in clients if c not in left_out]
            bank = aggregate(bank, [uploads[c] for c in order])
            t["aggregated"] = time.perf_counter()
            previous_codes, expert_codes = expert_codes or {}, {}
            for m in modules:
                E, T = embedding_matrices([stats[c] for c in order], m, N, r, previous_codes.get(m))
                expert_codes[m] = E.numpy()
                for i, c in enumerate(order):
                    client_codes[c][m] = T[i].numpy()
            t["codes"] = time.perf_counter()
            metrics["rounds"].append({
                "round": n, "seconds": 0.0, "assign_seconds": t["plan"] - t["start"], "absent": [], "joined": [],
                "rejected": left_out, "assignment": {m: [used.held(c)[m] for c in used.clients] for m in modules},
                "assignment_clients": used.clients, "num_experts": N,
                "clients": {c: {"score": 0.5, "train_loss": 1.0, "experts_mean": 4.0, "bytes_up": 1, "bytes_down": 1,
                                "num_examples": 1, "seconds": 1.0, "task": "t", "metric": "accuracy",
                                "experts": {m: len(v) for m, v in used.held(c).items()}} for c in clients}})
            report.update(metrics)
            t["report"] = time.perf_counter()
            previous = used
            times.append({"plan": t["plan"] - t["start"], "checks": t["checked"] - t["made"],
                          "aggregate": t["aggregated"] - t["checked"], "codes": t["codes"] - t["aggregated"],
                          "report": t["report"] - t["codes"]})
            del sent, uploads, stats
            print(f"round {n}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times[-1].items())
                  + f"; left out {len(left_out)}", flush=True)
    per_round = sum(sum(t.values()) for t in times) / len(times)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"server: clients={C} experts={N} modules={len(modules)} s_per_round={per_round:.2f} peak_gb={peak_gb:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
