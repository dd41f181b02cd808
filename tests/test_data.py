"""Data layer: BIG-bench parsing, splits, prompt masking/truncation, padding. Offline, no shared files."""

from __future__ import annotations

import json
import random
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from amole.data import (
    IGNORE_INDEX,
    SYNTHETIC_TASKS,
    Example,
    PromptFormat,
    TaskFormatError,
    UnknownTaskError,
    batches,
    collate,
    default_cache_dir,
    encode,
    fetch,
    load_task,
    pip_runner,
    split_client,
    synthetic_source,
    synthetic_task,
    task_per_client,
)
from amole.data.fetch import _task_of

TASK = {
    "name": "toy",
    "task_prefix": "Answer briefly.\n",
    "example_input_prefix": "\nIn: ",
    "example_output_prefix": "\nOut: ",
    "examples": [
        {"input": "2+2?", "target_scores": {"4": 1, "5": 0, "3": 0}},
        {"input": "capital of France?", "target": ["Paris", "paris"]},
        {"input": "say hi", "target": "hi"},
        {"input": "{code} braces", "target_scores": {"no": 0.0, "yes": 1.0}, "target": "yes, because"},
    ],
}


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    """One token per byte (no merges) so counts are exact; prepends BOS like Llama tokenizers."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({"<s>": len(vocab), "</s>": len(vocab) + 1, "<pad>": len(vocab) + 2})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.fixture()
def task_dir(tmp_path: Path) -> Path:
    (tmp_path / "toy.json").write_text(json.dumps(TASK))
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "task.json").write_text(json.dumps({**TASK, "name": "nested"}))
    return tmp_path


def test_parse_both_kinds_and_prefixes(task_dir: Path) -> None:
    exs = load_task("toy", task_dir, shuffle_choices=False)
    mc, gen, gen2, both = exs
    assert mc.is_choice and mc.choices == ("4", "5", "3") and mc.label == 0 and mc.target == "4"
    assert not gen.is_choice and gen.target == "Paris" and gen2.target == "hi"
    assert both.is_choice and both.target == "yes" and both.label == 1  # target_scores wins over target
    fmt = PromptFormat(task_prefix="Answer briefly.\n", input_prefix="\nIn: ", output_prefix="\nOut: ")
    assert gen.prompt == fmt.render("capital of France?")
    assert (
        gen.prompt == "### Instruction:\nAnswer briefly.\n\nIn: capital of France?\nOut:\n\n### Response:\n"
    )
    assert all(f"choice: {c}" in mc.prompt for c in mc.choices)
    assert "{code}" in both.prompt  # braces in inputs survive templating
    assert load_task("nested", task_dir)[1] == gen  # <dir>/<task>/task.json layout


def test_default_prefixes_template_and_choice_shuffle(tmp_path: Path) -> None:
    exs = [{"input": f"q{i}", "target_scores": {"right": 1, "w1": 0, "w2": 0}} for i in range(60)]
    (tmp_path / "mc.json").write_text(json.dumps({"name": "mc", "examples": exs}))
    parsed = load_task("mc", tmp_path, template="{input}")
    assert parsed[0].prompt.startswith("Q: q0\n  choice: ") and parsed[0].prompt.endswith("\nA:")
    assert all(e.choices[e.label] == e.target == "right" for e in parsed)
    assert len({e.label for e in parsed}) == 3  # correct answer is not always listed first
    assert parsed == load_task("mc", tmp_path, template="{input}")  # shuffling is deterministic


def test_unknown_task_lists_available(task_dir: Path) -> None:
    with pytest.raises(UnknownTaskError, match=r"toyy.*Available: .*toy.*did you mean"):
        load_task("toyy", task_dir)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ({"name": "x"}, "'examples'"),
        ({"examples": [{"target": "a"}]}, r"examples\[0\].*'input'"),
        ({"examples": [{"input": "a"}]}, r"examples\[0\].*'target'"),
        ({"examples": [{"input": "a", "target": []}]}, r"examples\[0\].*'target'"),
        ({"examples": [{"input": "a", "target_scores": {}}]}, "target_scores"),
        ("{not json", "invalid JSON"),
    ],
)
def test_malformed_file_names_file_and_problem(tmp_path: Path, content: object, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(TaskFormatError, match=needle) as err:
        load_task("bad", tmp_path)
    assert str(path) in str(err.value)


def test_sdist_member_names_map_to_tasks() -> None:
    assert _task_of("bigbench-1.0.0/bigbench/benchmark_tasks/hyperbaton/task.json") == "hyperbaton"
    assert _task_of("bigbench-1.0.0/bigbench/benchmark_tasks/a/sub/task.json") == "a/sub"
    assert _task_of("bigbench-1.0.0/bigbench/benchmark_tasks/hyperbaton/README.md") is None


def _ids(exs: list[Example]) -> set[str]:
    return {e.prompt for e in exs}


def test_split_sizes_disjoint_and_deterministic() -> None:
    exs = synthetic_task("first_letter", n=3000, seed=1)
    assert len(_ids(exs)) > 2900
    s = split_client(exs, seed=3)
    assert (len(s.test), len(s.eval), len(s.embed), len(s.train)) == (200, 200, 130, 2470)
    parts = [s.train, s.embed, s.eval, s.test]
    assert sum(len(p) for p in parts) == len(exs)
    ids = [{id(e) for e in p} for p in parts]
    assert all(not (a & b) for i, a in enumerate(ids) for b in ids[i + 1 :])
    again = split_client(exs, seed=3)
    assert (again.train, again.test) == (s.train, s.test)
    assert split_client(exs, seed=4).test != s.test


def test_split_caps() -> None:
    gen = synthetic_task("reverse", n=1000)
    s = split_client(gen, seed=0)
    assert (len(s.test), len(s.eval), len(s.embed), len(s.train)) == (50, 100, 42, 808)  # generative cap 50
    s = split_client(gen, seed=0, test_cap=7, eval_cap=5, embed_cap=3, max_train=10)
    assert (len(s.test), len(s.eval), len(s.embed), len(s.train)) == (7, 5, 3, 10)
    assert split_client(gen, seed=0, max_train=10).test == split_client(gen, seed=0).test
    small = split_client(gen[:20], seed=0)
    assert min(len(small.test), len(small.eval), len(small.embed)) >= 1 and small.train
    with pytest.raises(ValueError, match="too few"):
        split_client(gen[:3], seed=0)


def test_task_per_client_synthetic() -> None:
    clients = task_per_client(list(SYNTHETIC_TASKS), synthetic_source(n=100), seed=0)
    assert [c.task for c in clients] == list(SYNTHETIC_TASKS)
    assert [c.is_choice for c in clients] == [t in ("first_letter", "vowel_parity") for t in SYNTHETIC_TASKS]
    assert all(len(c.test) == 10 and len(c.eval) == 10 for c in clients)


def test_encode_masks_prompt_exactly(tok: PreTrainedTokenizerFast) -> None:
    ex = Example(prompt="Q: abc\nA:", target="xyz")
    out = encode(tok, ex, max_len=64)
    prompt_ids = tok(ex.prompt)["input_ids"]
    assert prompt_ids[0] == tok.bos_token_id and len(prompt_ids) == len(ex.prompt) + 1
    target_ids = tok(ex.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert out["input_ids"] == prompt_ids + target_ids
    assert out["labels"] == [IGNORE_INDEX] * len(prompt_ids) + target_ids


def test_left_truncation_keeps_target(tok: PreTrainedTokenizerFast) -> None:
    ex = Example(prompt="P" * 100 + "END", target="answer")
    out = encode(tok, ex, max_len=20)
    assert len(out["input_ids"]) == 20
    kept = [t for t, lab in zip(out["input_ids"], out["labels"], strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(kept[:-1]) == "answer" and kept[-1] == tok.eos_token_id
    prompt_part = out["input_ids"][: 20 - len(kept)]
    assert prompt_part[0] == tok.bos_token_id and tok.decode(prompt_part[1:]).endswith("PEND")


def test_overlong_target_is_truncated(tok: PreTrainedTokenizerFast) -> None:
    out = encode(tok, Example(prompt="question", target="t" * 50), max_len=16)
    assert len(out["input_ids"]) == 16
    learned = [lab for lab in out["labels"] if lab != IGNORE_INDEX]
    assert len(learned) == 8 and tok.eos_token_id not in learned  # half the window stays prompt
    assert out["input_ids"][0] == tok.bos_token_id


def test_collate_pads_right(tok: PreTrainedTokenizerFast) -> None:
    feats = [encode(tok, Example("ab", "c"), 32), encode(tok, Example("abcdef", "ghi"), 32)]
    batch = collate(feats, pad_id=tok.pad_token_id)
    short, long = (len(f["input_ids"]) for f in feats)
    assert batch["input_ids"].shape == (2, long) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (long - short)
    assert batch["input_ids"][0, short:].eq(tok.pad_token_id).all()
    assert batch["labels"][0, short:].eq(IGNORE_INDEX).all()
    assert batch["labels"][1].tolist() == feats[1]["labels"]


def test_batches_cycle_and_reshuffle(tok: PreTrainedTokenizerFast) -> None:
    exs = synthetic_task("upper", n=10)
    stream = batches(tok, exs, batch_size=4, max_len=64, rng=random.Random(0))
    sizes = [next(stream)["input_ids"].shape[0] for _ in range(7)]
    assert sizes == [4, 4, 2, 4, 4, 2, 4]  # endless, epoch by epoch
    first = [next(batches(tok, exs, 10, 64, random.Random(s)))["input_ids"][0].tolist() for s in range(4)]
    assert len({tuple(f) for f in first}) > 1  # order depends on the rng


def _fake_sdist(cache: Path) -> None:
    """A stand-in for the bigbench sdist with the real member layout (no network in tests)."""
    (cache / "sdist").mkdir(parents=True)
    src = cache / "src" / "bigbench-1.0.0" / "bigbench" / "benchmark_tasks"
    for name in ("toy", "other/sub"):
        (src / name).mkdir(parents=True)
        (src / name / "task.json").write_text(json.dumps(TASK))
    with tarfile.open(cache / "sdist" / "bigbench-1.0.0.tar.gz", "w:gz") as tf:
        tf.add(cache / "src" / "bigbench-1.0.0", arcname="bigbench-1.0.0")


def test_cache_extracts_from_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOLE_CACHE", str(tmp_path))
    cache = default_cache_dir()
    assert cache == tmp_path / "bigbench"
    _fake_sdist(cache)
    assert len(load_task("toy")) == 4 and (cache / "toy.json").is_file()
    assert len(load_task("other/sub")) == 4 and (cache / "other__sub.json").is_file()
    with pytest.raises(UnknownTaskError, match=r"nope.*Available: other/sub, toy"):
        load_task("nope")


def test_pip_command_picks_a_pip_that_can_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pip_runner.metadata, "version", lambda _: "26.2.1")
    assert pip_runner.pip_command(tmp_path) == [sys.executable, "-m", "pip"]
    monkeypatch.setattr(pip_runner.metadata, "version", lambda _: "26.3")
    wheel = tmp_path / f"pip-{pip_runner.FALLBACK_PIP}-py3-none-any.whl"
    wheel.write_bytes(b"")  # already cached: no download
    assert pip_runner.pip_command(tmp_path) == [sys.executable, str(wheel / "pip")]


def test_index_without_the_sdist_falls_back_to_github(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PyPI dropped bigbench 1.0.0: the task files then come from BIG-bench's GitHub layout, one file each."""
    monkeypatch.setenv("AMOLE_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    (repo / "toy").mkdir(parents=True)
    (repo / "toy" / "task.json").write_text(json.dumps(TASK))

    def no_sdist(cache_dir: Path) -> Path:
        raise fetch.DataSourceError("pip download bigbench==1.0.0 failed (exit 1)")

    monkeypatch.setattr(fetch, "download_sdist", no_sdist)
    monkeypatch.setattr(fetch, "GITHUB_TASK_URL", repo.as_uri() + "/{task}/task.json")
    assert len(load_task("toy")) == 4 and (default_cache_dir() / "toy.json").is_file()
    with pytest.raises(fetch.DataSourceError, match=r"'nope'.*exit 1.*scenario.local_dir.*bigbench_demo"):
        load_task("nope")
    assert not list(default_cache_dir().glob("*.tmp"))  # amole.util.atomic's temporary names


def test_demo_scenario_reads_the_bundled_tasks_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`make demo`'s scenario needs no download: its four tasks ship in the package."""
    from amole.compose import compose
    from amole.data.scenario import client_splits

    monkeypatch.setenv("AMOLE_CACHE", str(tmp_path))  # an empty cache: nothing may come from it
    monkeypatch.setattr(fetch, "download_sdist", lambda _: pytest.fail("the demo scenario tried to download"))
    settings = compose(["budget=demo", "scenario=bigbench_demo"])
    for client in range(settings.federation.num_clients):
        splits = client_splits(settings.scenario, str(client), settings.federation.seed)
        assert splits.task == settings.scenario.tasks[client]
        assert len(splits.test) == settings.scenario.test_cap and len(splits.train) > 300
    with pytest.raises(UnknownTaskError, match=r"'navigate'.*hyperbaton"):
        load_task("navigate", "bundled")


def test_first_examples_draws_the_cut_copys_splits(tmp_path: Path) -> None:
    """A run on whole task files with ``first_examples: N`` and a run on copies cut to their first N examples (the
    ../shared BIG-bench copies) see the same data, split the same way."""
    from dataclasses import replace

    from amole.compose import compose
    from amole.config import ScenarioConfig
    from amole.data.scenario import client_splits

    examples = [{"input": f"question {i}?", "target_scores": {f"a{i}": 1, f"b{i}": 0, f"c{i}": 0}} for i in range(90)]
    for folder, n in (("whole", 90), ("cut", 60)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "toy.json").write_text(json.dumps({**TASK, "examples": examples[:n]}))
    whole = ScenarioConfig(name="s", tasks=("toy",), local_dir=str(tmp_path / "whole"), first_examples=60)
    cut = replace(whole, local_dir=str(tmp_path / "cut"))
    a, b = client_splits(whole, "0", seed=3), client_splits(cut, "0", seed=3)
    for part in ("train", "embed", "eval", "test"):
        assert getattr(a, part) == getattr(b, part)
    seen = {ex.prompt for part in (a.train, a.embed, a.eval, a.test) for ex in part}
    assert len(seen) == 60 and not any(f"question {i}?" in p for p in seen for i in range(60, 90))
    assert client_splits(replace(whole, first_examples=None), "0", seed=3).test != a.test

    preset = compose(["scenario=bigbench_cpu_3k"]).scenario
    assert preset.first_examples == 3000 and preset.tasks == compose(["scenario=bigbench_cpu"]).scenario.tasks
    with pytest.raises(ValueError, match="first_examples cuts task files.*examples_per_task"):
        client_splits(compose(["scenario=dolly_dir1", "++scenario.first_examples=10"]).scenario, "0", seed=0)
    with pytest.raises(ValueError, match="first_examples must be a positive integer"):
        client_splits(replace(whole, first_examples=0), "0", seed=0)
