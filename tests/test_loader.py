"""Backbone loader: bnb quantization on CPU, local folders, meta-device shapes, name resolution errors.

Everything here is offline and fast (tiny-llama); the tiny backbone itself is tested in test_tiny.py, GGUF
handling in test_gguf.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from amole.backbones import loader
from amole.backbones.loader import adapter_target_shapes, is_quantized, linear_shapes, load_base_model
from amole.backbones.tiny import byte_tokenizer
from amole.config import ModelConfig
from tests.helpers import TEXT, TINY, text_ids, tiny_cfg

# --------------------------------------------------------------------------------------------------
# bitsandbytes quantization


@pytest.mark.parametrize(("quantization", "bnb_class"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantized_tiny_llama_runs_on_cpu(quantization: str, bnb_class: str) -> None:
    ref, _ = load_base_model(TINY, device="cpu")
    model, _ = load_base_model(tiny_cfg(quantization=quantization, dense_on_cpu=False), device="cpu")
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
        logits = model(text_ids()).logits
        ref_logits = ref(text_ids()).logits
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
    big = tiny_cfg(
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
        load_base_model(tiny_cfg(quantization="3bit"), device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        load_base_model(tiny_cfg(dtype="float8"), device="cpu")
