"""Carry the SmolLM2 backbone to an offline GPU machine in pieces: what may travel per call is smaller than the model.

The converted folder (``make model``) holds fp32 weights, ~520 MB; a device call here carries at most 64 MiB. So
``pack`` stores each matrix as int8 with one fp32 scale per output row (weight-only absmax: the usual
near-lossless scheme; the error per weight is at most 1/254 of its row's largest) and vectors as they are, and
cuts the result into parts of ``--part-mb`` (the first one small, to leave room for the wheels that travel with
it); ``unpack`` rebuilds a bf16 (or fp32) folder from all pieces and refuses an
incomplete set. ``random`` writes a folder with the same config and tokenizer and seeded random weights: for
speed and memory figures when the pieces could not all travel (its scores mean nothing).

    python tests/benchmarks/gpu_bundle.py pack --model-dir ~/.cache/amole/models/smollm2-135m --out .gpu/w
    python tests/benchmarks/gpu_bundle.py unpack --pieces /tmp/w --out /tmp/smollm2
    python tests/benchmarks/gpu_bundle.py random --pieces /tmp/w --out /tmp/smollm2-random
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save, save_file

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
SCALE = ".int8_row_scale"


def quantize(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """A matrix as int8 rows plus one fp32 scale per row; anything else unchanged."""
    if w.dim() != 2:
        return {"": w.contiguous()}
    w = w.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    return {"": torch.round(w / scale).clamp(-127, 127).to(torch.int8), SCALE: scale.squeeze(1)}


def dequantize(q: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale[:, None] if scale is not None else q.float()).to(dtype)


def pack(model_dir: Path, out: Path, part_mb: list[float]) -> list[Path]:
    """Meta files plus the int8 weights split into ``part-<k>`` byte ranges of ``part_mb[k]`` MiB (the last size
    repeats); returns the parts' paths. Byte ranges, not tensors: the 49152 x 576 embedding alone is 27 MiB."""
    weights = load_file(str(model_dir / WEIGHTS))
    out.mkdir(parents=True, exist_ok=True)
    meta = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != WEIGHTS)
    for name in meta:
        shutil.copy2(model_dir / name, out / name)
    stored = {name + suffix: t for name in sorted(weights) for suffix, t in quantize(weights[name]).items()}
    blob = save(stored)
    paths, offset = [], 0
    while offset < len(blob):
        size = int(part_mb[min(len(paths), len(part_mb) - 1)] * 2**20)
        paths.append(out / f"part-{len(paths)}")
        paths[-1].write_bytes(blob[offset:offset + size])
        offset += size
    manifest = {"parts": [p.name for p in paths], "sha256": hashlib.sha256(blob).hexdigest(),
                "tensors": sorted(weights), "meta": meta}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return paths


def unpack(pieces_dir: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A loadable model folder from every part the manifest names; an incomplete or corrupt set is an error."""
    manifest = json.loads((pieces_dir / MANIFEST).read_text())
    missing = [n for n in manifest["parts"] + manifest["meta"] if not (pieces_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"the bundle in {pieces_dir} is incomplete: missing {', '.join(missing)}")
    blob = b"".join((pieces_dir / n).read_bytes() for n in manifest["parts"])
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        raise ValueError(f"the bundle in {pieces_dir} is corrupt: its parts do not hash to the manifest's sha256")
    stored = load(blob)
    weights = {n: dequantize(stored[n], stored.get(n + SCALE), dtype) for n in manifest["tensors"]}
    out.mkdir(parents=True, exist_ok=True)
    for name in manifest["meta"]:
        shutil.copy2(pieces_dir / name, out / name)
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt"})
    return out


def random_folder(pieces_dir: Path, out: Path, seed: int = 0) -> Path:
    """The bundle's config and tokenizer with seeded random weights (the model's own initializer)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    manifest = json.loads((pieces_dir / MANIFEST).read_text())
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(pieces_dir), dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in manifest["meta"]:
        if name != "config.json":
            shutil.copy2(pieces_dir / name, out / name)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["pack", "unpack", "random"])
    p.add_argument("--model-dir", type=Path, help="pack: the converted folder (make model)")
    p.add_argument("--pieces", type=Path, help="unpack/random: the folder holding the manifest and pieces")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--part-mb", default="14,60", help="sizes of the parts in MiB, comma-separated; the last repeats")
    args = p.parse_args()
    if args.action == "pack":
        for path in pack(args.model_dir, args.out, [float(x) for x in args.part_mb.split(",")]):
            print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")
    elif args.action == "unpack":
        print(f"unpacked into {unpack(args.pieces, args.out)}")
    else:
        print(f"random weights in {random_folder(args.pieces, args.out)}")


if __name__ == "__main__":
    main()
