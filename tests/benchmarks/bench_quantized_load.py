"""Backbone load time with and without the quantized cache (amole.backbones.quantized_cache), each in a fresh process as
a Flower ClientApp loads it, on SmolLM2-135M (converted once by `make model`) unless --model names a folder.

Three processes, one after the other, against an empty cache root in a temporary folder:
  cold    -- quantizes on load and writes the cache entry (what the first round of a site pays);
  cached  -- reads the entry (every later round);
  plain   -- quantizes on load with the cache bypassed (what every round paid before).
Each reports the seconds spent in load_base_model (imports excluded) and the logits of one fixed input; the
cached logits must equal the quantize-on-load ones exactly.

    python tests/benchmarks/bench_quantized_load.py [--quantization 4bit] [--model <folder>]
Last line: ``quantized-load: cold=<s> cached=<s> plain=<s> identical=<yes|no>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch
from amole.backbones import loader
from amole.config import ModelConfig
model_dir, quantization, cache, mode, out = sys.argv[1:6]
cfg = ModelConfig(name=model_dir, quantization=quantization, cache_dir=cache)
start = time.perf_counter()
if mode == "plain":
    quant = loader.bnb_config(quantization, "cpu")
    with loader._quiet_bnb():
        model = loader._from_pretrained(model_dir, quant, torch.float32, "cpu", None)
else:
    model, _ = loader.load_base_model(cfg, device="cpu")
seconds = time.perf_counter() - start
with torch.no_grad():
    logits = model(torch.arange(1, 33).unsqueeze(0)).logits
torch.save(logits, out)
print(json.dumps({"seconds": seconds}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quantization", default="4bit", choices=["4bit", "8bit"])
    p.add_argument("--model", default=None, help="a local model folder (default: the converted SmolLM2-135M)")
    args = p.parse_args()
    if args.model is None:
        from amole.backbones.loader import _gguf_folder, _resolve
        from amole.config import ModelConfig

        cfg = ModelConfig(name="smollm2-135m")
        args.model = str(_gguf_folder(cfg, _resolve(cfg)))
    with tempfile.TemporaryDirectory(prefix="amole-bench-qload-") as tmp:
        seconds, logits = {}, {}
        for mode in ("cold", "cached", "plain"):
            out = Path(tmp) / f"{mode}.pt"
            res = subprocess.run([sys.executable, "-c", CHILD, args.model, args.quantization, str(Path(tmp) / "cache"),
                                  mode, str(out)], capture_output=True, text=True, check=True)
            seconds[mode] = json.loads(res.stdout.strip().splitlines()[-1])["seconds"]
            import torch

            logits[mode] = torch.load(out)
            print(f"{mode:>6}: {seconds[mode]:6.2f} s", flush=True)
        size = sum(f.stat().st_size for f in (Path(tmp) / "cache").rglob("*") if f.is_file())
        print(f"cache entry: {size / 2**20:.0f} MiB")
        same = all(torch.equal(logits[m], logits["plain"]) for m in ("cold", "cached"))
    print(f"quantized-load: cold={seconds['cold']:.1f} cached={seconds['cached']:.1f} plain={seconds['plain']:.1f} "
          f"identical={'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
