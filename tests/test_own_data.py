"""A site's own data through data-path: every accepted layout, bad rows named by file and line, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amole.config import ScenarioConfig
from amole.data import DEFAULT_TEMPLATE, PromptFormat, TaskFormatError, split_client
from amole.data.dolly import dolly_prompt
from amole.data.own import load_own_examples, read_own_data
from amole.data.scenario import client_splits, task_name


def render(text: str, choices: tuple[str, ...] = ()) -> str:
    return PromptFormat(DEFAULT_TEMPLATE).render(text, choices)


def write_jsonl(path: Path, rows: list[dict], extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("\n".join([json.dumps(r) for r in rows] + list(extra_lines)) + "\n", encoding="utf-8")
    return path


def test_alpaca_and_dolly_rows(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "mixed.jsonl", [
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Name a colour.", "input": "", "output": "blue"},
        {"instruction": "Who wrote it?", "context": "Hamlet is a play by Shakespeare.", "response": "Shakespeare",
         "category": "closed_qa"},
    ])
    ex = read_own_data(f).examples
    assert ex[0].prompt == render("Translate to French.\n\nInput:\ncat") and ex[0].target == "chat"
    assert ex[1].prompt == render("Name a colour.") and not ex[1].is_choice
    # Dolly rows get the built-in Dolly scenario's exact prompt and keep their category as the group.
    assert ex[2].prompt == dolly_prompt("Who wrote it?", "Hamlet is a play by Shakespeare.")
    assert (ex[2].target, ex[2].group) == ("Shakespeare", "closed_qa")


def test_prompt_completion_csv_and_question_answer_json(tmp_path: Path) -> None:
    csv_file = tmp_path / "pc.csv"
    csv_file.write_text('prompt,completion\n"Two lines\nof prompt",done\nSay 7,7\n', encoding="utf-8")
    ex = read_own_data(csv_file).examples
    assert [(e.prompt, e.target) for e in ex] == [(render("Two lines\nof prompt"), "done"), (render("Say 7"), "7")]
    json_file = tmp_path / "qa.json"
    json_file.write_text(json.dumps([{"question": "Capital of Italy?", "answer": "Rome"}]), encoding="utf-8")
    assert [(e.prompt, e.target) for e in read_own_data(json_file).examples] == [(render("Capital of Italy?"), "Rome")]


def test_multiple_choice_answer_as_index_text_or_letter(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "mc.jsonl", [
        {"question": "Sky colour?", "choices": ["red", "blue"], "answer": 1},
        {"question": "Grass colour?", "choices": ["green", "pink"], "answer": "green"},
        {"instruction": "Pick the even number.", "choices": ["3", "4", "5"], "answer": "B"},
    ])
    ex = read_own_data(f).examples
    assert all(e.is_choice for e in ex)
    assert [(e.label, e.target) for e in ex] == [(1, "blue"), (0, "green"), (1, "4")]
    assert ex[0].prompt == render("Sky colour?", ("red", "blue"))
    csv_file = tmp_path / "mc.csv"
    csv_file.write_text('question,choices,answer\nSky?,red|blue,1\nSea?,"[""wet"", ""dry""]",wet\n', encoding="utf-8")
    assert [(e.choices, e.label) for e in read_own_data(csv_file).examples] == [(("red", "blue"), 1),
                                                                                  (("wet", "dry"), 0)]


def test_bad_rows_are_reported_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write_jsonl(tmp_path / "data.jsonl", [
        {"instruction": "ok", "output": "fine"},
        {"text": "no known field"},
        {"question": "Q?", "choices": ["a", "b"], "answer": 5},
    ], extra_lines=("", "{broken json", json.dumps({"prompt": "p", "completion": ""})))
    data = read_own_data(f)
    assert len(data.examples) == 1
    assert [s.split(": ", 1)[0] for s in data.skipped] == [f"{f}:2", f"{f}:3", f"{f}:5", f"{f}:6"]
    assert "no known fields (has ['text'])" in data.skipped[0]
    assert "answer 5 is neither one of the choices" in data.skipped[1]
    assert "invalid JSON" in data.skipped[2] and "'completion' is empty" in data.skipped[3]
    assert len(load_own_examples(f)) == 1
    assert f"{f}:5: invalid JSON" in capsys.readouterr().err
    # JSON arrays and CSV records are located by the line they start on.
    arr = tmp_path / "arr.json"
    arr.write_text('[\n  {"question": "q", "answer": "a"},\n  {"question": "", "answer": "a"}\n]', encoding="utf-8")
    assert read_own_data(arr).skipped == [f"{arr}:3: 'question' is empty"]
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text('question,answer\n"a\nb",yes\nq2,\n', encoding="utf-8")
    assert read_own_data(csv_file).skipped == [f"{csv_file}:4: has 'question' but no 'answer' (an empty CSV cell "
                                              "counts as missing)"]


def test_empty_and_unusable_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(TaskFormatError, match="empty.jsonl: the file is empty"):
        read_own_data(tmp_path / "empty.jsonl")
    f = write_jsonl(tmp_path / "useless.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(TaskFormatError, match=r"useless.jsonl: no usable row: .*useless.jsonl:1: no known fields"):
        read_own_data(f)
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(TaskFormatError, match="unsupported data file type '.txt'"):
        read_own_data(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        read_own_data(tmp_path / "missing.jsonl")
    # Refused before training: building the client's splits fails on it.
    with pytest.raises(TaskFormatError, match="useless.jsonl"):
        client_splits(ScenarioConfig(), "0", 0, data_path=str(f))


def test_data_path_splits_follow_the_scenario_rules(tmp_path: Path) -> None:
    rows = [{"instruction": f"Echo {i}", "output": str(i)} for i in range(40)]
    f = write_jsonl(tmp_path / "echo.jsonl", rows)
    scenario = ScenarioConfig()
    splits = client_splits(scenario, "3", seed=7, data_path=str(f))
    assert task_name(scenario, "3", data_path=str(f)) == "echo" == splits.task
    from amole.util.seeds import stable_seed

    expected = split_client(read_own_data(f).examples, seed=stable_seed("split", 7, "3"), task="echo")
    assert splits == expected
    assert (len(splits.test), len(splits.eval), len(splits.embed), len(splits.train)) == (4, 4, 2, 30)


def test_bigbench_task_json_and_folders_still_work(tmp_path: Path) -> None:
    task = {"name": "toy", "examples": [{"input": f"{i}+0?", "target": str(i)} for i in range(12)]
            + [{"input": "pick", "target_scores": {"x": 1, "y": 0}}]}
    (tmp_path / "task.json").write_text(json.dumps(task), encoding="utf-8")
    ex = read_own_data(tmp_path / "task.json").examples
    assert ex[0].prompt == render("Q: 0+0?\nA:") and ex[-1].is_choice
    splits = client_splits(ScenarioConfig(), "0", 0, data_path=str(tmp_path / "task.json"))
    assert len(splits.train) + len(splits.embed) + len(splits.eval) + len(splits.test) == 13
    write_jsonl(tmp_path / "more.jsonl", [{"prompt": "p", "completion": "c"}])
    assert len(read_own_data(tmp_path).examples) == 14  # a folder: every supported file in it


def test_mixed_value_types_and_broken_lines_fall_back_line_by_line(tmp_path: Path) -> None:
    f = tmp_path / "types.jsonl"
    f.write_text('{"question": "a", "answer": 1}\n\n{"question": "b", "answer": "two"}\n[1, 2]\n', encoding="utf-8")
    data = read_own_data(f)
    assert [e.target for e in data.examples] == ["1", "two"]
    assert data.skipped == [f"{f}:4: a row must be a JSON object, got list"]
