"""The download-free test backbone: a small randomly initialised Llama plus a byte-level tokenizer.

Tests and smoke runs use it so that nothing has to be fetched or converted; ``ModelConfig.tiny`` overrides
any of ``TINY_DEFAULTS`` (plus ``seed``).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

TINY_LLAMA = "tiny-llama"

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<bos>", "<eos>"
BYTE_VOCAB_SIZE = 256 + 3  # 256 byte tokens (id == byte value) + <pad>, <bos>, <eos>

# Defaults of the tiny test backbone; ``ModelConfig.tiny`` overrides any of them (plus ``seed``).
TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": BYTE_VOCAB_SIZE,
    "max_position_embeddings": 2048,
    "pad_token_id": 256,
    "bos_token_id": 257,
    "eos_token_id": 258,
    "tie_word_embeddings": False,
}
TINY_SEED = 0


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-char map, the alphabet the ByteLevel pre-tokenizer emits."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A download-free byte-level tokenizer: token id == byte value, then <pad>=256, <bos>=257, <eos>=258.

    ByteLevel BPE without merges round-trips any text exactly, which is all the tiny backbone needs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD_TOKEN, BOS_TOKEN, EOS_TOKEN])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        model_max_length=TINY_DEFAULTS["max_position_embeddings"],
    )
    assert (fast.pad_token_id, fast.bos_token_id, fast.eos_token_id) == (256, 257, 258)
    return fast


def tiny_llama_config(overrides: dict[str, Any] | None = None) -> tuple[LlamaConfig, int]:
    """The tiny test backbone's config and init seed (``seed`` may be given among the overrides)."""
    values = {**TINY_DEFAULTS, **(overrides or {})}
    seed = int(values.pop("seed", TINY_SEED))
    return LlamaConfig(**values), seed


def build_tiny_llama(overrides: dict[str, Any] | None, dtype: torch.dtype) -> PreTrainedModel:
    """Randomly initialised tiny Llama; seeded without disturbing the caller's global RNG."""
    config, seed = tiny_llama_config(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype)
