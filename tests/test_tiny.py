"""The tiny test backbone: byte tokenizer round trip, seeded tiny Llama, config overrides and dtype."""

from __future__ import annotations

import torch

from amole.backbones.loader import is_quantized, load_base_model, model_device
from amole.backbones.tiny import BYTE_VOCAB_SIZE, byte_tokenizer
from tests.helpers import TEXT, TINY, text_ids, tiny_cfg

# --------------------------------------------------------------------------------------------------
# byte tokenizer


def test_byte_tokenizer_round_trips_and_has_specials() -> None:
    tok = byte_tokenizer()
    ids = tok(TEXT)["input_ids"]
    assert ids == list(TEXT.encode("utf-8"))  # token id == byte value, nothing added
    assert tok.decode(ids) == TEXT
    assert len(tok) == BYTE_VOCAB_SIZE
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
    c, _ = load_base_model(tiny_cfg(tiny={"seed": 1}), device="cpu")
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
    out = model(text_ids())
    assert out.logits.shape == (1, 24, len(tok)) and torch.isfinite(out.logits).all()
    assert out.logits.dtype == torch.float32


def test_tiny_llama_overrides_and_dtype() -> None:
    model, _ = load_base_model(
        tiny_cfg(tiny={"hidden_size": 32, "num_hidden_layers": 1}, dtype="bfloat16"), "cpu"
    )
    assert model.config.hidden_size == 32 and len(model.model.layers) == 1
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model(text_ids()).logits.shape[-1] == BYTE_VOCAB_SIZE
