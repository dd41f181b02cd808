"""`make gpu-check`: what one CUDA GPU does with this project, in one offline run of a few minutes.

1. bench-step on CUDA, bf16 and NF4: step time and tokens/s of AMoLE (eager and with its adapter path compiled) and
   peft LoRA (full-logit and answer-position loss), the AMoLE/LoRA ratios and peak GPU memory
   (``bench_step.measure``); with the bf16 backbone also AMoLE and LoRA each with the decoder compiled whole
   (``model.compile=model``, CUDA's default: no op left for the host to issue one by one; ``--no-whole-model``
   skips it and its compiling);
1b. the same at Llama-3.2-1B's shape with random weights (nothing to download): batch 1 x 1024 (the paper's) and
   16 x 512, one client's evaluation timed, and the paper's schedule (10 clients x 30 rounds x 200 steps) projected;
2. one round of ``budget=gpu`` with 10 clients at reduced local steps: by default in this process through
   ``tools.direct_grid`` (the clients one after another on the one GPU, sharing the backbone, no Ray), or with
   ``--ray`` through the Flower simulation the experiment runner uses (``tools.simulation.simulate``): wall time,
   each client's train / evaluation seconds and score, peak GPU memory.

Offline: a GPU machine has no internet, so it must bring
* this project's Python dependencies (``make install`` there; or wheels, as docs/gpu-check.md does it);
* the converted SmolLM2 folder: ``make model`` writes it to ``~/.cache/amole/models/smollm2-135m`` (about 520 MB,
  fp32 safetensors + tokenizer); copy it there and pass ``--model-dir``, or put it at ``shared/models/
  smollm2-135m`` (the default when present); where less may travel, ``gpu_bundle.py`` carries it in parts;
* the BIG-bench task files for the round (10 JSON files, ~3 MB): ``--bigbench-dir`` (default
  ``shared/data/bigbench`` when present); without them the round runs on the in-memory synthetic tasks.

    python tests/benchmarks/gpu_check.py [--model-dir DIR] [--bigbench-dir DIR] [--steps 20] [--ray]
    python tests/benchmarks/gpu_check.py --cpu-smoke     # tiny model on the CPU, seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_step, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: amole, server_app

import bench_step  # noqa: E402

from amole.backbones.gguf import cache_root  # noqa: E402

SYNTHETIC_TASKS = "[reverse,upper,copy,sort,first_letter,vowel_parity,reverse,upper,copy,sort]"
# Llama-3.2-1B's shape (its config.json), built with random weights here: step time does not depend on the values.
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
            "rope_theta": 500000.0, "tie_word_embeddings": True, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 2}
# The paper's schedule: 10 clients x 30 rounds x 200 local steps at batch 1 x 1024, <= 50 test prompts a client.
PAPER = {"clients": 10, "rounds": 30, "steps": 200, "test": 50, "new_tokens": 64, "prompt": 256}


def default_model_dir() -> Path:
    shared = Path("shared/models/smollm2-135m")
    return shared if shared.is_dir() else cache_root() / "models" / "smollm2-135m"


def bench(model: str, cpu_smoke: bool, whole: bool) -> list[dict[str, float]]:
    if cpu_smoke:
        return [bench_step.measure("cpu", "none", 2, 32, steps=1, warmup=1, answer_tokens=4, model_name=model,
                                   whole=whole)]
    return [bench_step.measure("cuda", q, 16, 512, steps=5, warmup=2, answer_tokens=8, model_name=model,
                               dtype="bfloat16", whole=whole and q == "none") for q in ("none", "4bit")]


def paper_shape(cpu_smoke: bool, whole: bool) -> list[str]:
    """AMoLE (eager and compiled) against LoRA at Llama-3.2-1B's shape, batch 1 x 1024 (the paper's) and 16 x 512;
    one client's evaluation (50 prompts, 64 new tokens, no early EOS: random weights) timed with our decoder; the
    paper's schedule projected from both."""
    device, shape = ("cpu", {}) if cpu_smoke else ("cuda", LLAMA_1B)
    batches = [(1, 64)] if cpu_smoke else [(1, 1024), (16, 512)]
    lines, step_s = [], {}
    for bs, seq in batches:
        r = bench_step.measure(device, "none", bs, seq, steps=1 if cpu_smoke else 5, warmup=1 if cpu_smoke else 2,
                               model_name="tiny-llama", dtype=None, tiny=shape, whole=whole)
        step_s[bs, seq] = r
        lines.append(f"1B shape {bs}x{seq}: AMoLE/LoRA {r['ratio']:.2f} eager, {r['ratio_compiled']:.2f} adapter path "
                     f"compiled" + (f", {r['ratio_whole_vs_eager_lora']:.2f} decoder compiled whole (against LoRA "
                                    f"compiled whole {r['ratio_whole']:.2f})" if "ratio_whole" in r else "") + " | "
                     f"tok/s AMoLE {r['amole_answer_tok_s']:.0f}, LoRA {r['lora_answer_tok_s']:.0f} | peak "
                     f"{r.get('peak_mem_gib', float('nan')):.1f} GiB")
    eval_s, (n, new) = one_client_eval(device, shape, cpu_smoke)
    first = step_s[batches[0]]
    per_client = {m: PAPER["steps"] * first[f"{m}_answer_s"] + eval_s for m in ("amole", "amole_compiled", "lora")
                  if f"{m}_answer_s" in first}  # compiled: where torch.compile can build kernels
    runs = PAPER["clients"] * PAPER["rounds"]
    lines.append(f"1B shape, one client's evaluation ({n} prompts x {new} new tokens): {eval_s:.1f} s")
    lines.append("paper's schedule (10 clients x 30 rounds x 200 steps at 1x1024, one GPU, clients in turn), "
                 "projected: " + ", ".join(f"{m} {runs * t / 3600:.1f} h" for m, t in per_client.items()))
    return lines


def one_client_eval(device: str, shape: dict, cpu_smoke: bool) -> tuple[float, tuple[int, int]]:
    """Seconds to answer one client's test prompts greedily with the AMoLE model (the round's evaluate phase)."""
    from amole.config import AdapterConfig, ModelConfig
    from amole.evaluation.generation import decode

    mcfg = ModelConfig(name="tiny-llama", dtype="bfloat16" if device == "cuda" else "float32", tiny=dict(shape))
    model, _ = bench_step.amole_model(mcfg, AdapterConfig(num_experts=8, top_k=2), held=8, device=device)
    model.eval()
    n, plen, new = (4, 16, 4) if cpu_smoke else (PAPER["test"], PAPER["prompt"], PAPER["new_tokens"])
    rows = torch.randint(3, model.config.vocab_size, (n, plen)).tolist()
    decode(model, rows[:2], 2, None, 0)  # warm-up
    bench_step.sync(torch.device(device))
    start = time.perf_counter()
    decode(model, rows, new, None, 0, batch_size=32)  # eos None: every answer runs to full length
    bench_step.sync(torch.device(device))
    del model
    return time.perf_counter() - start, (n, new)


def round_overrides(args: argparse.Namespace) -> list[str]:
    if args.cpu_smoke:
        return ["model=tiny", "budget=smoke", "scenario=synthetic", f"scenario.tasks={SYNTHETIC_TASKS}",
                "federation.num_clients=10", "federation.num_rounds=1", "train.steps=2", *args.override]
    out = ["budget=gpu", "model=smollm2", f"model.name={args.model_dir}", "federation.num_clients=10",
           "federation.num_rounds=1", f"train.steps={args.steps}", f"scenario.test_cap={args.test_cap}",
           f"scenario.embed_cap={args.test_cap}", f"eval.max_new_tokens={args.max_new_tokens}"]
    if args.bigbench_dir and Path(args.bigbench_dir).is_dir():
        out += ["scenario=bigbench_tasks", f"scenario.local_dir={Path(args.bigbench_dir).resolve()}"]
    else:
        print(f"no BIG-bench folder at {args.bigbench_dir!r}: the round runs on synthetic tasks", flush=True)
        out += ["scenario=synthetic", f"scenario.tasks={SYNTHETIC_TASKS}"]
    return out + list(args.override)


def one_round(args: argparse.Namespace) -> dict:
    # Imported here, not above: the bench needs neither Flower nor Hydra, so it runs where they are missing.
    from amole.compose import settings_from_cfg
    from client_app.app import app as client_app
    from server_app.strategy import run
    from tools.direct_grid import DirectGrid
    from tools.experiment import compose_job, experiment_options

    cfg, _ = compose_job(round_overrides(args))
    settings, opts = settings_from_cfg(cfg), experiment_options(cfg)
    if args.cpu_smoke:
        opts.update(client_num_cpus=1, client_num_gpus=0.0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="amole-gpu-check-") as tmp:
        start = time.perf_counter()
        if args.ray:
            from tools.simulation import simulate

            state, error, resources, _ = simulate(settings, Path(tmp), None, opts, Path(tmp) / "round.log")
            if error:
                print((Path(tmp) / "round.log").read_text()[-4000:], flush=True)
                raise RuntimeError(f"the round failed:\n{error}")
        else:
            state = run(DirectGrid(client_app, settings.federation.num_clients), settings, runs_dir=Path(tmp))
            resources = {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)} \
                if torch.cuda.is_available() else {}
        wall = time.perf_counter() - start
    last = state.metrics["rounds"][-1]
    return {"wall_s": wall, "rounds": state.round, "resources": resources, "clients": last["clients"],
            "steps": settings.train.steps, "grid": "Ray simulation" if args.ray else "in-process, one client at a time"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU: check that the script runs")
    p.add_argument("--model-dir", default=str(default_model_dir()))
    p.add_argument("--bigbench-dir", default="shared/data/bigbench")
    p.add_argument("--steps", type=int, default=20, help="local steps of the round (budget=gpu has 200)")
    p.add_argument("--test-cap", type=int, default=50, help="test and embedding examples per client")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--ray", action="store_true", help="run the round in Flower's Ray simulation (needs ray)")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--skip-round", action="store_true")
    p.add_argument("--skip-1b", action="store_true", help="skip the Llama-3.2-1B-shaped step and projection")
    p.add_argument("--no-whole-model", dest="whole_model", action="store_false",
                   help="skip stepping AMoLE and LoRA with the decoder compiled whole (model.compile=model)")
    p.add_argument("override", nargs="*", help="more Hydra overrides for the round")
    args = p.parse_args()
    start = time.perf_counter()
    if not args.cpu_smoke:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu-smoke to check the script on the CPU")
        if not (Path(args.model_dir) / "config.json").is_file():
            raise SystemExit(f"no converted SmolLM2 folder at {args.model_dir}: copy ~/.cache/amole/models/"
                             "smollm2-135m there (see this script's docstring) or pass --model-dir")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    model = "tiny-llama" if args.cpu_smoke else args.model_dir
    lines = []
    if not args.skip_bench:
        print("== bench-step", flush=True)
        for res in bench(model, args.cpu_smoke, args.whole_model):
            lines.append(f"bench-step: ratio {res['ratio']:.2f} (compiled {res['ratio_compiled']:.2f}), AMoLE "
                         f"{res['amole_answer_tok_s']:.0f} tok/s, "
                         f"LoRA {res['lora_answer_tok_s']:.0f} tok/s, answer-position speed-up "
                         f"{res['amole_speedup']:.2f}x, peak {res.get('peak_mem_gib', float('nan')):.2f} GiB"
                         + (f"; decoder compiled whole (model.compile=model): {res['ratio_whole_vs_eager_lora']:.2f} "
                            f"against eager LoRA, {res['ratio_whole']:.2f} against LoRA compiled whole"
                            if "ratio_whole" in res
                            else ""))
    if not args.skip_1b:
        print("== Llama-3.2-1B shape (random weights)", flush=True)
        lines += paper_shape(args.cpu_smoke, args.whole_model)
    if not args.skip_round:
        print("== one round, 10 clients", flush=True)
        r = one_round(args)
        res, clients = r["resources"], r["clients"]
        lines.append(f"round ({r['grid']}): {len(clients)} clients x {r['steps']} steps in {r['wall_s']:.1f} s, "
                     f"peak GPU {res.get('peak_gpu_mb', 'n/a')} MB"
                     + (f", peak client RSS {res['peak_client_mb']:.0f} MB, total PSS "
                        f"{res.get('peak_total_mb', 0):.0f} MB" if "peak_client_mb" in res else ""))  # Ray only
        lines.append("client  task  score  train s  eval s  seconds  answer tokens")
        for c, m in clients.items():
            lines.append(f"{c}  {m.get('task', '?')}  {m['score']:.3f}  {m.get('train_s', float('nan')):.1f}  "
                         f"{m.get('eval_s', float('nan')):.1f}  {m.get('seconds', float('nan')):.1f}  "
                         f"{m.get('gen_tokens', float('nan')):.1f}")
        lines.append(f"round mean score {sum(m['score'] for m in clients.values()) / len(clients):.3f}")
    print("== gpu-check summary" + (" (CPU smoke run: no GPU figures)" if args.cpu_smoke else ""))
    for line in lines:
        print(line)
    print(f"gpu-check: done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
