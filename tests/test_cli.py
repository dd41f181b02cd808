"""The ``amole`` command on a tiny kept model: generate, evaluate, export, check-data, and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import amole
from amole.config import EvalConfig
from amole.data import DEFAULT_TEMPLATE
from amole.data.own import read_own_data
from amole.evaluation.evaluate import evaluate
from amole.site.cli import format_prompt, main
from amole.site.personal import META_FILE, read_meta
from tests.personal_helpers import kept_folder, logits

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kept_folder(tmp_path_factory.mktemp("cli") / "kept")[0]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_prompt_format_follows_training_unless_asked(kept: Path) -> None:
    meta = read_meta(kept)
    _, tokenizer = amole.load_personalized(kept, device="cpu")
    assert format_prompt("Hi", meta, tokenizer) == (DEFAULT_TEMPLATE.replace("{input}", "Hi"), True)
    assert format_prompt("Hi", meta, tokenizer, "raw") == ("Hi", True)
    with pytest.raises(ValueError, match="has no chat template"):
        format_prompt("Hi", meta, tokenizer, "chat")
    with pytest.raises(ValueError, match="has no chat template"):  # a model recorded as trained with chat
        format_prompt("Hi", {**meta, "chat_template": True}, tokenizer)


def test_generate_one_prompt_streams_and_is_greedy(kept: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", "--model", str(kept), "--prompt", "Say hi", "--max-new-tokens", "5", "--device", "cpu"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first and first.endswith("\n")
    sample = [*argv, "--do-sample", "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20", "--seed", "1"]
    assert main(sample) == 0


def test_generate_file_writes_every_row(kept: Path, tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "id": 1}, {"instruction": "b", "input": "c"},
                                                {"question": "d"}])
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--model", str(kept), "--input", str(prompts), "--output", str(out), "--device", "cpu",
            "--max-new-tokens", "3", "--batch-size", "2"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("id") for r in rows] == [1, None, None] and all(isinstance(r["generation"], str) for r in rows)
    assert main(["generate", "--model", str(kept), "--input", str(prompts)]) == 2  # --output missing


@pytest.mark.parametrize("kind", ["choice", "generation"])
def test_evaluate_reports_the_federation_metric(kept: Path, tmp_path: Path, kind: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    if kind == "choice":
        rows = [{"question": f"Is {i} even?", "choices": ["yes", "no"], "answer": i % 2} for i in range(6)]
    else:
        rows = [{"instruction": f"Count to {i}", "output": " ".join(map(str, range(1, i + 2)))} for i in range(5)]
    data = write_jsonl(tmp_path / f"{kind}.jsonl", rows)
    preds = tmp_path / "preds.jsonl"
    argv = ["evaluate", "--model", str(kept), "--data", str(data), "--predictions", str(preds), "--device", "cpu"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    model, tokenizer = amole.load_personalized(kept, device="cpu")
    meta = read_meta(kept)
    expected = evaluate(model, tokenizer, read_own_data(data).examples, meta["max_seq_len"],
                        EvalConfig(**meta["eval"]))
    assert result["metric"] == expected["metric"] == ("accuracy" if kind == "choice" else "rougeL")
    assert result["n"] == len(rows)
    assert result["score"] == pytest.approx(expected["score"], abs=1e-9)
    written = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(written) == len(rows) and all("prediction" in r for r in written)


def test_export_then_load_personalized_matches_the_kept_model(kept: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert main(["export", "--model", str(kept), "--out", str(out)]) == 0
    assert (out / "README.md").is_file()
    exported, _ = amole.load_personalized(out)
    original, _ = amole.load_personalized(kept, device="cpu")
    torch.testing.assert_close(logits(exported), logits(original), rtol=0, atol=0)


def test_bad_input_is_named_exits_nonzero_and_writes_nothing(kept: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    preds = tmp_path / "preds.jsonl"
    assert main(["evaluate", "--model", str(kept), "--data", str(empty), "--predictions", str(preds)]) == 2
    assert "empty.jsonl: the file is empty" in capsys.readouterr().err and not preds.exists()
    assert main(["generate", "--model", str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    for f in kept.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    meta = json.loads((other / META_FILE).read_text())
    meta["base"]["tiny"] = {"hidden_size": 32}  # a folder that names another base model
    (other / META_FILE).write_text(json.dumps(meta))
    assert main(["generate", "--model", str(other), "--prompt", "x", "--device", "cpu"]) == 2
    assert "other weights than the base model" in capsys.readouterr().err
    (other / "adapters.safetensors").unlink()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    assert main(["export", "--model", str(other), "--out", str(mine)]) == 2
    assert "adapters.safetensors is missing" in capsys.readouterr().err
    assert main(["export", "--model", str(kept), "--out", str(mine)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]


def test_check_data_and_the_console_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["amole"] == "amole.site.cli:main"
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(20)])
    done = subprocess.run([sys.executable, "-m", "amole.site.cli", "check-data", "--data", str(data)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["usable"] == 20 and report["splits"]["train"] == 15
    assert main(["check-data", "--data", str(tmp_path / "x.jsonl")]) == 2
    assert "x.jsonl does not exist" in capsys.readouterr().err
