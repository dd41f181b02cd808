"""The kept personalized model: exact round trip, latest/best, named refusals, atomic writes, export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import amole
from amole.config import AdapterConfig, ModelConfig
from amole.moe.model import amole_layers
from amole.site.model_card import export_personalized
from amole.site.personal import (
    ADAPTERS_FILE,
    META_FILE,
    PersonalModelError,
    keep_round,
    load_personalized,
    read_meta,
    save_personalized,
)
from tests.personal_helpers import ADAPTER, info, kept_folder, logits, trained_model


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            meta[section][field] = value
        else:
            meta[key] = value
    (folder / META_FILE).write_text(json.dumps(meta))


def test_save_load_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    folder, model = kept_folder(tmp_path / "kept")
    loaded, tokenizer = load_personalized(folder, base="tiny-llama", adapter=ADAPTER, device="cpu")
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    held = {n: m.expert_ids for n, m in amole_layers(loaded).items()}
    assert held == {n: m.expert_ids for n, m in amole_layers(model).items()}
    assert tokenizer.eos_token_id == 258 and loaded.config.use_cache
    meta = read_meta(folder)
    assert (meta["run_id"], meta["round"], meta["score"], meta["metric"], meta["task"]) == (
        "run-1", 3, 0.5, "accuracy", "toy")
    assert meta["base"]["name"] == "tiny-llama" and meta["base"]["quantization"] == "none"
    assert meta["prompt"]["template"] == amole.data.DEFAULT_TEMPLATE and meta["chat_template"] is False
    assert sorted(p.name for p in folder.iterdir()) == [ADAPTERS_FILE, META_FILE]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_quantized_base_is_reloaded_with_the_same_quantization(tmp_path: Path) -> None:
    cfg = ModelConfig(name="tiny-llama", quantization="8bit", dense_on_cpu=False)
    model, _ = trained_model(cfg)
    save_personalized(tmp_path / "q", model, info(model=cfg))
    loaded, _ = load_personalized(tmp_path / "q", device="cpu")
    assert any(type(m).__name__ == "Linear8bitLt" for m in loaded.modules())
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    with pytest.raises(PersonalModelError, match="quantization '8bit' \\(asked for 'none'\\)"):
        load_personalized(tmp_path / "q", base=ModelConfig(name="tiny-llama"), device="cpu")


def test_keep_round_keeps_latest_and_the_best_scoring_round(tmp_path: Path) -> None:
    model, _ = trained_model()
    site = tmp_path / "site"
    assert set(keep_round(site, model, info(round=1, score=0.4))) == {"latest", "best"}
    assert set(keep_round(site, model, info(round=2, score=0.3))) == {"latest"}
    assert (read_meta(site / "latest")["round"], read_meta(site / "best")["round"]) == (2, 1)
    keep_round(site, model, info(round=3, score=0.6))
    assert (read_meta(site / "latest")["round"], read_meta(site / "best")["round"]) == (3, 3)
    assert read_meta(site)["folder"] == str(site / "best")  # a site folder resolves to its best model
    from amole.site.folder import model_folder, site_folder

    assert model_folder(site_folder(tmp_path, "0"), "run-1") == tmp_path / "0" / "model" / "run-1"
    with pytest.raises(ValueError, match="cannot name a folder"):
        model_folder(site_folder(tmp_path, "0"), "../x")


def test_another_base_model_or_adapter_config_is_refused(tmp_path: Path) -> None:
    folder, _ = kept_folder(tmp_path / "kept")
    other = "another base model: name 'tiny-llama' \\(asked for 'smollm2-135m'\\)"
    with pytest.raises(PersonalModelError, match=other):
        load_personalized(folder, base="smollm2-135m", device="cpu")
    with pytest.raises(PersonalModelError, match="another adapter config: r 4 \\(asked for 8\\)"):
        load_personalized(folder, adapter=AdapterConfig(r=8, alpha=8.0, dropout=0.0, num_experts=6), device="cpu")
    # The folder names a base whose weights differ from what it was trained on (same architecture).
    _edit_meta(folder, base__tiny={"seed": 1})
    with pytest.raises(PersonalModelError, match="other weights than the base model 'tiny-llama'"):
        load_personalized(folder, device="cpu")


def test_missing_and_corrupted_files_are_named(tmp_path: Path) -> None:
    folder, _ = kept_folder(tmp_path / "kept")
    data = (folder / ADAPTERS_FILE).read_bytes()
    (folder / ADAPTERS_FILE).write_bytes(data[:-7] + b"\x00" * 7)
    with pytest.raises(PersonalModelError, match=f"{ADAPTERS_FILE} is corrupted: its checksum"):
        load_personalized(folder, device="cpu")
    _edit_meta(folder, files={ADAPTERS_FILE: {}})  # no checksum to compare: safetensors itself must notice
    (folder / ADAPTERS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(PersonalModelError, match=f"{ADAPTERS_FILE} is corrupted"):
        load_personalized(folder, device="cpu")
    (folder / ADAPTERS_FILE).unlink()
    with pytest.raises(PersonalModelError, match=f"{ADAPTERS_FILE} is missing"):
        load_personalized(folder, device="cpu")
    (folder / META_FILE).unlink()
    with pytest.raises(PersonalModelError, match=f"{META_FILE} is missing"):
        load_personalized(folder, device="cpu")
    with pytest.raises(PersonalModelError, match="does not exist"):
        load_personalized(tmp_path / "nowhere", device="cpu")


def test_a_failed_save_leaves_the_previous_model_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, model = kept_folder(tmp_path / "kept")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_personalized(folder, model, info(round=4))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PersonalModelError, match="not an AMoLE model folder: refusing"):
        save_personalized(tmp_path / "mine", model, info())
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_export_then_load_personalized_gives_identical_logits(tmp_path: Path) -> None:
    folder, model = kept_folder(tmp_path / "kept")
    out = export_personalized(folder, tmp_path / "export")
    card = (out / "README.md").read_text()
    assert "run-1" in card and "| round | 3 |" in card and "0.5000 accuracy" in card
    assert "amole.load_personalized(" in card
    loaded, _ = amole.load_personalized(out)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    with pytest.raises(ValueError, match="is the model folder itself"):
        export_personalized(folder, folder)


def test_import_amole_stays_light() -> None:
    code = "import sys, amole; assert 'torch' not in sys.modules; assert callable(amole.load_personalized)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
