"""The quantized-backbone cache (amole.backbones.quantized_cache): a cached load gives exactly the model a
quantize-on-load gives, without quantizing; a stale, mismatched or damaged entry is detected and rebuilt.

Offline and fast: the tiny random Llama saved as a local model folder (the path SmolLM2 takes after its GGUF
conversion), every cache under tmp_path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from amole.backbones import loader, quantized_cache
from amole.backbones.quantized_cache import MANIFEST, entry_dir, read_manifest
from amole.backbones.tiny import build_tiny_llama, byte_tokenizer
from amole.config import ModelConfig
from tests.helpers import text_ids


def _save_tiny(folder: Path, seed: int = 0) -> Path:
    build_tiny_llama({"seed": seed}, torch.float32).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return _save_tiny(tmp_path / "tiny-src")


@pytest.fixture
def quantize_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the quantize-on-load calls the loader makes (each one is a cache miss)."""
    calls: list[str] = []
    original = loader._from_pretrained

    def spy(path: str, quant: object, *args: object) -> object:
        if quant is not None:
            calls.append(path)
        return original(path, quant, *args)

    monkeypatch.setattr(loader, "_from_pretrained", spy)
    return calls


def _cfg(source: Path, tmp_path: Path, quantization: str = "4bit") -> ModelConfig:
    return ModelConfig(name=str(source), quantization=quantization, cache_dir=str(tmp_path / "cache"),
                       dense_on_cpu=False)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(text_ids()).logits


def _entry(cfg: ModelConfig) -> Path:
    entries = [p for p in (Path(cfg.cache_dir) / "quantized").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(entries) == 1, entries
    return entries[0]


@pytest.mark.parametrize(("quantization", "bnb_class"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_cached_load_is_the_quantize_on_load_model(
    source: Path, tmp_path: Path, quantize_calls: list[str], quantization: str, bnb_class: str
) -> None:
    cfg = _cfg(source, tmp_path, quantization)
    quant = loader.bnb_config(quantization, "cpu")
    with loader._quiet_bnb():
        # quantize-on-load as the loader does it (frozen: bnb's bf16 repack off), no cache involved
        direct = loader.freeze(loader._from_pretrained(str(source), quant, torch.float32, "cpu", None))
    quantize_calls.clear()

    first, _ = loader.load_base_model(cfg, device="cpu")  # miss: quantizes and fills the cache
    assert len(quantize_calls) == 1
    entry = _entry(cfg)
    manifest = read_manifest(entry)
    assert manifest is not None and manifest["key"]["quantization"]["load_in_" + quantization] is True
    assert set(manifest["key"]["versions"]) == {"torch", "transformers", "bitsandbytes"}
    assert manifest["key"]["source"]["model.safetensors"]["sha256"] == hashlib.sha256(
        (source / "model.safetensors").read_bytes()).hexdigest()

    cached, tokenizer = loader.load_base_model(cfg, device="cpu")  # hit: a read, no quantization
    assert len(quantize_calls) == 1
    import bitsandbytes as bnb

    q_proj = cached.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, getattr(bnb.nn, bnb_class))
    if quantization == "4bit":
        assert q_proj.weight.quant_state.quant_type == "nf4" and q_proj.compute_dtype == torch.float32
    assert loader.is_quantized(cached) and not cached.training
    assert all(not p.requires_grad for p in cached.parameters()) and cached.config.use_cache is False
    assert tokenizer.pad_token is not None
    reference = _logits(direct)
    assert torch.equal(_logits(first), reference)
    assert torch.equal(_logits(cached), reference)


def test_fast_path_reads_no_source_weights(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source file whose size and mtime the manifest recorded is not hashed again."""
    cfg = _cfg(source, tmp_path)
    loader.load_base_model(cfg, device="cpu")

    def no_hashing(*args: object, **kwargs: object) -> None:
        raise AssertionError("source re-hashed although unchanged")

    monkeypatch.setattr(quantized_cache.hashlib, "file_digest", no_hashing)
    monkeypatch.setattr(quantized_cache, "_write", no_hashing)
    model, _ = loader.load_base_model(cfg, device="cpu")
    assert loader.is_quantized(model)


@pytest.mark.parametrize("field", ["versions", "quantization", "dtype", "format"])
def test_mismatched_manifest_key_is_rebuilt(
    source: Path, tmp_path: Path, quantize_calls: list[str], field: str
) -> None:
    cfg = _cfg(source, tmp_path)
    model, _ = loader.load_base_model(cfg, device="cpu")
    reference = _logits(model)
    entry = _entry(cfg)
    manifest = read_manifest(entry)
    good_key = manifest["key"]
    tampered = json.loads(json.dumps(good_key))
    tampered[field] = {"bitsandbytes": "0.0.1"} if field == "versions" else "something else"
    (entry / MANIFEST).write_text(json.dumps({**manifest, "key": tampered}))

    model, _ = loader.load_base_model(cfg, device="cpu")
    assert len(quantize_calls) == 2  # rebuilt, not trusted
    assert read_manifest(entry)["key"] == good_key
    assert torch.equal(_logits(model), reference)
    loader.load_base_model(cfg, device="cpu")
    assert len(quantize_calls) == 2  # and read from then on


def test_changed_source_is_rebuilt(source: Path, tmp_path: Path, quantize_calls: list[str]) -> None:
    cfg = _cfg(source, tmp_path)
    old = _logits(loader.load_base_model(cfg, device="cpu")[0])
    _save_tiny(source, seed=1)  # same folder, other weights: the content fingerprint changes
    model, _ = loader.load_base_model(cfg, device="cpu")
    assert len(quantize_calls) == 2
    new = _logits(model)
    assert not torch.allclose(new, old)
    quant = loader.bnb_config("4bit", "cpu")
    with loader._quiet_bnb():
        direct = loader.freeze(loader._from_pretrained(str(source), quant, torch.float32, "cpu", None))
    assert torch.equal(new, _logits(direct))
    assert torch.equal(_logits(loader.load_base_model(cfg, device="cpu")[0]), new)
    assert len(quantize_calls) == 3  # the direct load above; the cached one was a read


@pytest.mark.parametrize("damage", ["truncated weights", "garbage weights", "garbage manifest", "no manifest"])
def test_damaged_entry_is_rebuilt(source: Path, tmp_path: Path, quantize_calls: list[str], damage: str) -> None:
    cfg = _cfg(source, tmp_path)
    reference = _logits(loader.load_base_model(cfg, device="cpu")[0])
    entry = _entry(cfg)
    weights = entry / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage weights":  # same size, so only the load itself can tell
        weights.write_bytes(b"\xff" * weights.stat().st_size)
    elif damage == "garbage manifest":
        (entry / MANIFEST).write_text("{not json")
    else:
        (entry / MANIFEST).unlink()
    model, _ = loader.load_base_model(cfg, device="cpu")
    assert len(quantize_calls) == 2
    assert torch.equal(_logits(model), reference)
    assert read_manifest(entry) is not None
    leftovers = [p.name for p in entry.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # temporary and replaced folders are gone


def test_entries_are_per_quantization_and_device() -> None:
    root = Path("/cache")
    nf4_cpu = entry_dir(root, "m", loader.bnb_config("4bit", "cpu"), torch.float32, "cpu")
    nf4_cuda = entry_dir(root, "m", loader.bnb_config("4bit", "cuda"), torch.float32, "cuda")
    int8 = entry_dir(root, "m", loader.bnb_config("8bit", "cpu"), torch.float32, "cpu")
    bf16 = entry_dir(root, "m", loader.bnb_config("4bit", "cpu"), torch.bfloat16, "cpu")
    assert len({nf4_cpu, nf4_cuda, int8, bf16}) == 4
    assert nf4_cpu.parent == root / "quantized" and nf4_cpu.name.startswith("m-4bit-nf4-cpu-")
    assert int8.name.startswith("m-8bit-cpu-")


def test_unquantized_and_tiny_loads_leave_no_cache(source: Path, tmp_path: Path) -> None:
    loader.load_base_model(ModelConfig(name=str(source), cache_dir=str(tmp_path / "cache")), device="cpu")
    loader.load_base_model(ModelConfig(name="tiny-llama", quantization="4bit", cache_dir=str(tmp_path / "cache")),
                           device="cpu")
    assert not (tmp_path / "cache" / "quantized").exists()
