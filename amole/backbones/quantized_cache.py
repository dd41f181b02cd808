"""Quantized backbones kept on disk, so that loading one is a read and not a re-quantization.

bitsandbytes quantizes while ``from_pretrained`` loads full-precision weights (SmolLM2-135M to NF4: ~15 s on
CPU); a folder saved from the quantized model (bitsandbytes' own serialization: packed weights plus their
quant states) loads in a fraction of that, with identical outputs. Flower starts a fresh ClientApp process for
every message, so every round of every site pays the load.

One cache entry per (model, quantization, compute dtype, device type) lives in
``<cache root>/quantized/<name>-<quantization>-<device>-<hash>/`` with a manifest written last. The manifest
records the full key: the source's content fingerprint (sha256 of its config and weight files), the
bitsandbytes settings, the dtype, the device type and the versions of torch / transformers / bitsandbytes.
An entry is used only if its key equals the current one and its files are all there with their recorded
sizes; anything else (stale, mismatched, truncated, unreadable) is rebuilt. Builds go to a temporary sibling
folder renamed into place under a file lock, so concurrent first loads build once and readers never see half
an entry. Source files are re-hashed only when their size or mtime changed since the manifest was written.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

log = logging.getLogger(__name__)

MANIFEST = "amole_quantized.json"
FORMAT = 1  # bump when the layout or the meaning of the key changes
SOURCE_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")
VERSIONED = ("torch", "transformers", "bitsandbytes")


def entry_dir(root: Path, name: str, quant: BitsAndBytesConfig, dtype: torch.dtype, device: str) -> Path:
    """The cache folder of one (model, quantization, dtype, device type); its manifest says what is in it."""
    settings = json.dumps([_quant_settings(quant), str(dtype), torch.device(device).type], sort_keys=True)
    bits = "8bit" if quant.load_in_8bit else f"4bit-{quant.bnb_4bit_quant_type}"
    slug = re.sub(r"[^\w.-]+", "_", name).strip("_") or "model"
    return root / "quantized" / f"{slug}-{bits}-{torch.device(device).type}-{_digest(settings)[:10]}"


def load_quantized(
    source: Path,
    name: str,
    quant: BitsAndBytesConfig,
    dtype: torch.dtype,
    device: str,
    root: Path,
    quantize: Callable[[], PreTrainedModel],
) -> PreTrainedModel:
    """The model of folder ``source`` quantized by ``quant``: read from the cache, else ``quantize()``-d and saved.

    ``quantize`` must load ``source`` with ``quant`` (bitsandbytes quantizes on load); its model is returned
    as is on a cache miss, after being saved while still untouched (bnb's CPU path repacks weights on first use).
    """
    entry = entry_dir(root, name, quant, dtype, device)
    manifest = read_manifest(entry)
    key = _key(source, name, quant, dtype, device, manifest)
    if _valid(entry, manifest, key):
        model = _read(entry, dtype, device)
        if model is not None:
            return model
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        manifest = read_manifest(entry)  # another process may have built it while we waited
        if _valid(entry, manifest, key) and (model := _read(entry, dtype, device)) is not None:
            return model
        log.info("quantizing %s (%s) into the cache %s", name, _reason(entry, manifest, key), entry)
        model = quantize()
        try:
            _write(entry, model, key, source)
        except OSError as exc:  # a cache is an optimisation: a full or read-only disk must not stop the run
            log.warning("could not cache the quantized model in %s: %s", entry, exc)
        return model


def read_manifest(entry: Path) -> dict[str, Any] | None:
    """The entry's manifest, or None if there is none or it is not valid JSON."""
    try:
        data = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------------
# key


def source_fingerprint(source: Path, previous: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{file: {size, sha256}}`` of the source's config and weight files (what decides the quantized weights).

    ``previous`` is a manifest: a file whose size and mtime it recorded is not read again.
    """
    files = sorted({p for pattern in SOURCE_PATTERNS for p in source.glob(pattern) if p.is_file()})
    if not any(p.name != "config.json" for p in files):
        raise FileNotFoundError(f"no weight files ({', '.join(SOURCE_PATTERNS[1:])}) in {str(source)!r}")
    known = (previous or {}).get("source_stat", {})
    hashes = (previous or {}).get("key", {}).get("source", {})
    out = {}
    for path in files:
        st = path.stat()
        seen = known.get(path.name)
        if seen == {"size": st.st_size, "mtime_ns": st.st_mtime_ns} and path.name in hashes:
            sha = hashes[path.name]["sha256"]
        else:
            with open(path, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
        out[path.name] = {"size": st.st_size, "sha256": sha}
    return out


def _key(
    source: Path, name: str, quant: BitsAndBytesConfig, dtype: torch.dtype, device: str, manifest: dict | None
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": name,
        "source": source_fingerprint(source, manifest),
        "quantization": _quant_settings(quant),
        "dtype": str(dtype),
        "device": torch.device(device).type,
        "versions": {pkg: _version(pkg) for pkg in VERSIONED},
    }


def _quant_settings(quant: BitsAndBytesConfig) -> dict[str, Any]:
    """The bitsandbytes settings as plain JSON (dtypes as strings), without bookkeeping fields."""
    settings = json.loads(json.dumps(quant.to_dict(), default=str, sort_keys=True))
    settings.pop("_load_in_4bit", None), settings.pop("_load_in_8bit", None)
    return settings


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# entries


def _valid(entry: Path, manifest: dict | None, key: dict[str, Any]) -> bool:
    if manifest is None or manifest.get("key") != key:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    try:
        return all((entry / rel).stat().st_size == size for rel, size in files.items())
    except OSError:
        return False


def _reason(entry: Path, manifest: dict | None, key: dict[str, Any]) -> str:
    """Why an entry is rebuilt, for the log."""
    if manifest is None:
        return "first load" if not entry.exists() else "no readable manifest"
    cached = manifest.get("key", {})
    changed = [k for k in key if cached.get(k) != key[k]] if isinstance(cached, dict) else ["key"]
    return f"stale: {', '.join(changed)} changed" if changed else "files missing or damaged"


def _read(entry: Path, dtype: torch.dtype, device: str) -> PreTrainedModel | None:
    """The cached model, or None (logged) if the entry cannot be loaded: it is then rebuilt."""
    try:
        return AutoModelForCausalLM.from_pretrained(str(entry), dtype=dtype, device_map={"": device})
    except Exception as exc:  # noqa: BLE001 - any failure to read a cache entry means: rebuild it
        log.warning("quantized cache entry %s is unreadable (%s: %s); rebuilding it", entry, type(exc).__name__, exc)
        return None


def _write(entry: Path, model: PreTrainedModel, key: dict[str, Any], source: Path) -> None:
    """Save into a temporary sibling, manifest last, then swap it in for whatever was there."""
    tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    old = entry.parent / f".{entry.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp))
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        stat = {p.name: {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
                for p in (source / rel for rel in key["source"])}
        manifest = {"key": key, "files": files, "source_path": str(source.resolve()), "source_stat": stat,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if entry.exists():
            entry.rename(old)
        tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
