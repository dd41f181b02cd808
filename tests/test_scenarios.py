"""SNLI / Dolly / Natural-Instructions loading from tiny local files and the Dirichlet scenario wiring.

Everything is written into tmp_path; the hub path is exercised only through a stand-in ``load_dataset``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest

from amole.compose import compose
from amole.config import ScenarioConfig
from amole.data import (
    DataSourceError,
    TaskFormatError,
    load_dolly,
    load_natinst_task,
    load_snli,
    pools,
)
from amole.data.pools import dirichlet_examples, dirichlet_parts, load_pool
from amole.data.scenario import client_splits, task_name
from amole.data.snli import ANSWERS, detokenize

PREMISES = ["A man plays a guitar on a stage .", "Two dogs run through the `` snow '' .", "A child is n't sleeping ."]


def snli_rows(n_per_label: int = 30) -> list[dict]:
    rows = []
    for i in range(n_per_label):
        for label in ("entailment", "neutral", "contradiction"):
            rows.append({"premise": PREMISES[i % 3], "hypothesis": f"Hypothesis {i} about {label} .", "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CATEGORIES = ["open_qa", "general_qa", "classification", "closed_qa", "brainstorming", "information_extraction",
              "summarization", "creative_writing"]


def dolly_rows(n_per_category: int = 10) -> list[dict]:
    return [{"instruction": f"Question {i} of {c}?", "context": "Some context." if i % 2 else "",
             "response": f"Answer {i}.", "category": c} for c in CATEGORIES for i in range(n_per_category)]


@pytest.fixture()
def snli_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "snli_dev.jsonl", snli_rows())


@pytest.fixture()
def dolly_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "dolly.jsonl", dolly_rows())


# --- SNLI ---------------------------------------------------------------------------------------------------------


def test_snli_parsing_labels_prompt_and_dropped_rows(tmp_path: Path) -> None:
    rows = [
        {"premise": PREMISES[1], "hypothesis": "Dogs are outside .", "label": "entailment"},
        {"premise": "P", "hypothesis": "H", "label": "-"},
        {"premise": "P", "hypothesis": "H", "label": -1},
        {"premise": "P", "hypothesis": "H", "label": 1},  # the hub's integer ids
        {"sentence1": "S1", "sentence2": "S2", "gold_label": "contradiction"},  # original release layout
        {"sentence1": "S1", "sentence2": "S2", "gold_label": "-"},
    ]
    exs = load_snli(str(write_jsonl(tmp_path / "s.jsonl", rows)), hub_id=None)
    assert [e.target for e in exs] == ["Yes", "Maybe", "No"]
    assert [e.group for e in exs] == ["entailment", "neutral", "contradiction"]
    assert all(e.is_choice and e.choices == ANSWERS == ("Yes", "Maybe", "No") for e in exs)
    assert [e.label for e in exs] == [0, 1, 2]
    first = exs[0].prompt
    assert 'Premise: Two dogs run through the "snow".' in first and "Hypothesis: Dogs are outside." in first
    assert "Yes, Maybe or No" in first and first.startswith("### Instruction:") and first.endswith("### Response:\n")
    assert detokenize("He is n't here , is he ?") == "He isn't here, is he?"
    assert detokenize("Already plain text, (fine).") == "Already plain text, (fine)."


def test_snli_errors_name_the_line(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"premise": "P", "hypothesis": "H", "label": "entailment"},
                                               {"premise": "P", "hypothesis": "H", "label": "maybe"}])
    with pytest.raises(TaskFormatError, match=r"bad.jsonl:2.*label 'maybe'"):
        load_snli(str(bad), hub_id=None)
    (tmp_path / "broken.jsonl").write_text('{"premise": "P"}\n{not json\n')
    with pytest.raises(TaskFormatError, match="broken.jsonl:2"):
        load_snli(str(tmp_path / "broken.jsonl"), hub_id=None)
    write_jsonl(tmp_path / "nohyp.jsonl", [{"premise": "P", "label": "neutral"}])
    with pytest.raises(TaskFormatError, match="nohyp.jsonl:1.*hypothesis"):
        load_snli(str(tmp_path / "nohyp.jsonl"), hub_id=None)


def test_local_path_file_folder_glob_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "snli"
    folder.mkdir()
    write_jsonl(folder / "a_dev.jsonl", snli_rows(2))
    write_jsonl(folder / "b_test.jsonl", snli_rows(3))
    (folder / "README.md").write_text("not data")
    assert len(load_snli(str(folder), hub_id=None)) == 15
    assert len(load_snli(str(folder / "b_test.jsonl"), hub_id=None)) == 9
    assert len(load_snli(str(folder / "*_dev.jsonl"), hub_id=None)) == 6
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(load_snli("~/snli", hub_id=None)) == 15


# --- Dolly --------------------------------------------------------------------------------------------------------


def test_dolly_parsing(tmp_path: Path) -> None:
    rows = [*dolly_rows(1)[:3], {"instruction": "Empty answer", "context": "", "response": " ", "category": "open_qa"}]
    exs = load_dolly(str(write_jsonl(tmp_path / "d.jsonl", rows)), hub_id=None)
    assert len(exs) == 3 and not any(e.is_choice for e in exs)
    assert [e.group for e in exs] == CATEGORIES[:3]
    assert exs[0].target == "Answer 0." and "Question 0 of open_qa?" in exs[0].prompt
    assert "Context:" not in exs[0].prompt
    with_ctx = load_dolly(str(write_jsonl(tmp_path / "c.jsonl", [dolly_rows(2)[1]])), hub_id=None)[0]
    assert "Question 1 of open_qa?\n\nContext:\nSome context." in with_ctx.prompt
    # a JSON list file works too (the FedIT-style copies)
    (tmp_path / "list.json").write_text(json.dumps(dolly_rows(2)))
    assert len(load_dolly(str(tmp_path / "list.json"), hub_id=None)) == 16
    write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "context": "", "category": "open_qa"}])
    with pytest.raises(TaskFormatError, match="bad.jsonl:1.*response"):
        load_dolly(str(tmp_path / "bad.jsonl"), hub_id=None)


# --- hub path (stand-in load_dataset, never the network) -----------------------------------------------------------


def test_no_data_and_no_hub_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="local_path"):
        load_snli(str(tmp_path / "nothing"), hub_id=None)


def test_hub_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError, match=r"stanfordnlp/snli.*no internet.*local_path"):
        load_snli(str(tmp_path / "cache"), hub_id="stanfordnlp/snli")


def test_hub_rows_are_parsed_and_saved_for_next_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(hub_id: str, split: str) -> list[dict]:
        calls.append((hub_id, split))
        return [{"premise": "P", "hypothesis": "H", "label": i % 3} for i in range(6)] + [
            {"premise": "P", "hypothesis": "H", "label": -1}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    cache = tmp_path / "cache" / "snli"
    exs = load_snli(str(cache), hub_id="stanfordnlp/snli", hub_split="validation+test")
    assert calls == [("stanfordnlp/snli", "validation+test")] and len(exs) == 6
    assert (cache / "snli.jsonl").is_file()
    again = load_snli(str(cache), hub_id="stanfordnlp/snli")  # local copy now: no second hub call
    assert calls == [("stanfordnlp/snli", "validation+test")] and again == exs


# --- scenario wiring ----------------------------------------------------------------------------------------------


def snli_scenario(path: Path, **kw: object) -> ScenarioConfig:
    values = {"name": "snli_test", "source": "snli", "partition": "dirichlet", "alpha": 0.5, "num_clients": 4,
              "min_samples": 8, "local_path": str(path), "hub_id": None, **kw}
    return ScenarioConfig(**values)  # type: ignore[arg-type]


def test_client_i_gets_its_part(snli_file: Path) -> None:
    scenario = snli_scenario(snli_file)
    pool = load_pool(scenario)
    assert len(pool) == 90
    parts = dirichlet_parts(scenario, seed=0)
    assert sorted(i for p in parts for i in p) == list(range(90))  # disjoint cover of the pool
    seen: list[str] = []
    for i in range(4):
        splits = client_splits(scenario, str(i), seed=0)
        held = splits.train + splits.embed + splits.eval + splits.test
        assert Counter(ex.prompt for ex in held) == Counter(pool[j].prompt for j in parts[i])
        assert Counter(held) == Counter(dirichlet_examples(scenario, str(i), 0))
        assert splits.is_choice and splits.task == task_name(scenario, str(i)) == f"snli/client{i}"
        assert len(held) >= 8 and splits.test and splits.eval and splits.train
        seen += [ex.prompt for ex in held]
    assert len(seen) == 90


def test_partition_depends_only_on_config_seed_and_client(snli_file: Path) -> None:
    scenario = snli_scenario(snli_file, alpha=0.3)
    a = [client_splits(scenario, str(i), seed=1).train for i in range(4)]
    pools._pool.cache_clear()  # as in a fresh process: nothing cached
    pools._parts.cache_clear()
    assert a == [client_splits(scenario, str(i), seed=1).train for i in range(4)]
    assert dirichlet_parts(scenario, 1) != dirichlet_parts(scenario, 2)


def test_dirichlet_scenario_errors(snli_file: Path) -> None:
    scenario = snli_scenario(snli_file)
    with pytest.raises(ValueError, match="num_clients=4"):
        client_splits(scenario, "4", seed=0)
    with pytest.raises(ValueError, match="not an index"):
        client_splits(scenario, "alice", seed=0)
    with pytest.raises(ValueError, match="does not apply"):
        client_splits(scenario, "0", seed=0, task="hyperbaton")
    with pytest.raises(ValueError, match="partition: dirichlet"):
        client_splits(snli_scenario(snli_file, partition="task", tasks=("snli",)), "0", seed=0)
    with pytest.raises(ValueError, match="partition"):
        client_splits(snli_scenario(snli_file, partition="shards"), "0", seed=0)


def test_dolly_scenario_is_generative_with_category_skew(dolly_file: Path) -> None:
    scenario = snli_scenario(dolly_file, source="dolly", alpha=0.1, num_clients=3, min_samples=10)
    splits = [client_splits(scenario, str(i), seed=0) for i in range(3)]
    assert not any(s.is_choice for s in splits)
    assert sum(len(s.train) + len(s.embed) + len(s.eval) + len(s.test) for s in splits) == 80


@pytest.mark.parametrize("source", ["snli", "dolly"])
def test_presets_compose(source: str, snli_file: Path, dolly_file: Path) -> None:
    alphas = {"0.1": 0.1, "1": 1.0, "100": 100.0}
    for tag, alpha in alphas.items():
        s = compose([f"scenario={source}_dir{tag}", "budget=demo"]).scenario
        assert (s.name, s.source, s.partition, s.alpha) == (f"{source}_dir{tag}", source, "dirichlet", alpha)
        assert s.num_clients == 4  # follows federation.num_clients of the budget
        assert s.local_path == f"~/.cache/amole/{source}" and s.hub_id
    path = snli_file if source == "snli" else dolly_file
    s = compose([f"scenario={source}_dir0.1", "budget=smoke", f"scenario.local_path={path}",
                 "scenario.min_samples=10"]).scenario
    assert s.num_clients == 3
    splits = client_splits(s, "2", seed=0)
    assert splits.task == f"{source}/client2" and splits.train


# --- Natural Instructions -----------------------------------------------------------------------------------------


def test_natural_instructions_local_task_files(tmp_path: Path) -> None:
    task = {"Definition": ["Classify the sentence pair as E, N or C."],
            "Instances": [{"id": str(i), "input": f"Sentence 1: s{i}. Sentence 2: t{i}.", "output": ["E", "e"]}
                          for i in range(40)]}
    (tmp_path / "task190_snli_classification.json").write_text(json.dumps(task))
    exs = load_natinst_task("task190_snli_classification", str(tmp_path), hub_id=None)
    assert len(exs) == 40 and exs[0].target == "E" and not exs[0].is_choice
    assert "Classify the sentence pair" in exs[0].prompt and "Input: Sentence 1: s0." in exs[0].prompt
    scenario = ScenarioConfig(name="ni", source="natural_instructions", tasks=("task190_snli_classification",),
                              local_dir=str(tmp_path))
    splits = client_splits(scenario, "0", seed=0)
    assert splits.task == "task190_snli_classification" and len(splits.test) == 4
    with pytest.raises(LookupError, match="task191"):
        load_natinst_task("task191_hotpotqa", str(tmp_path), hub_id=None)
    with pytest.raises(DataSourceError, match="hub_id"):
        load_natinst_task("task190_snli_classification", None, hub_id=None)
