"""conf/protocol: `paper` sets every point of the official code's protocol, `default` keeps today's behaviour,
and the paper's path runs end to end (bf16 adapters, clean router, Adam eps, its decoding and Rouge-L)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from amole.client import train as train_module
from amole.client.train import train_steps
from amole.compose import compose
from amole.config import AdapterConfig, EvalConfig, ScenarioConfig, Settings, TrainConfig
from amole.data import Example, batches, synthetic_task
from amole.data.dirichlet import dirichlet_indices_paper
from amole.data.pools import dirichlet_parts, load_pool
from amole.data.procedures import protocol_notes
from amole.data.scenario import client_splits
from amole.evaluation.evaluate import evaluate, generate
from amole.moe.bank import create_bank, payload
from amole.moe.model import export_adapters, import_adapters, inject
from amole.util.seeds import stable_seed

PAPER = {
    "protocol.name": "paper", "model.quantization": "none", "model.dtype": "bfloat16",
    "adapter.router_input": "clean", "adapter.dtype": "bfloat16", "train.adam_eps": 1e-6,
    "eval.rouge": "rouge_paper", "eval.decoding": "generation_config", "scenario.prompts": "paper",
    "scenario.dirichlet": "paper", "scenario.splits": "paper", "scenario.min_samples": 10,
}


def value(settings: Settings, dotted: str) -> object:
    section, key = dotted.split(".")
    return getattr(getattr(settings, section), key)


@pytest.mark.parametrize("model", ["smollm2", "hub", "tiny"])
def test_paper_preset_sets_every_point(model: str) -> None:
    settings = compose([f"model={model}", "scenario=dolly_dir0.1", "protocol=paper"])
    assert {k: value(settings, k) for k in PAPER} == PAPER


def test_default_preset_is_todays_behaviour() -> None:
    """The composed default equals the dataclass defaults, which are what ran before the protocol group."""
    settings = compose(["scenario=snli_dir0.1"])
    assert settings.protocol.name == "default"
    assert settings.adapter.router_input == AdapterConfig().router_input == "dropped"
    assert settings.adapter.dtype == "float32" and settings.train.adam_eps == TrainConfig().adam_eps == 1e-8
    assert (settings.eval.rouge, settings.eval.decoding) == ("rouge_score", "greedy")
    s = settings.scenario
    assert (s.prompts, s.dirichlet, s.splits, s.min_samples) == ("amole", "amole", "amole", 50)
    assert settings.model.quantization == "4bit"  # the smollm2 preset's own


def test_old_settings_without_a_protocol_section_load() -> None:
    values = compose([]).to_dict()
    del values["protocol"]
    assert Settings.from_dict(values).protocol.name == "default"


# --- data -----------------------------------------------------------------------------------------------------------

def snli_file(tmp_path: Path, n: int = 120) -> Path:
    labels = ("entailment", "neutral", "contradiction")
    rows = [{"premise": f"Premise {i} .", "hypothesis": f"Hypothesis {i} .", "label": labels[i % 3]} for i in range(n)]
    path = tmp_path / "snli_dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def paper_snli(path: Path) -> ScenarioConfig:
    return ScenarioConfig(name="snli_paper", source="snli", partition="dirichlet", alpha=0.5, num_clients=4,
                          min_samples=10, local_path=str(path), hub_id=None, prompts="paper", dirichlet="paper",
                          splits="paper")


def test_paper_partition_of_a_pool_uses_the_official_label_ids(tmp_path: Path) -> None:
    scenario = paper_snli(snli_file(tmp_path))
    pool = load_pool(scenario)
    want = dirichlet_indices_paper([ex.label for ex in pool], 4, 0.5, stable_seed("dirichlet", 0), 10)
    assert [list(p) for p in dirichlet_parts(scenario, 0)] == want
    assert pool[0].prompt.startswith("Suppose Premise 0. Can we infer that")


def test_paper_splits_and_the_missing_train_split_note(tmp_path: Path) -> None:
    scenario = paper_snli(snli_file(tmp_path, n=600))
    splits = client_splits(scenario, "1", seed=0)
    n = len(dirichlet_parts(scenario, 0)[1])
    share = 10_000 / 570_152  # validation (= test) rows of stanfordnlp/snli over all three splits
    bounds = [int(n * b) for b in np.cumsum([0.0, (1 - 2 * share) * 0.95, (1 - 2 * share) * 0.05, share])] + [n]
    assert [len(splits.train), len(splits.embed), len(splits.eval), len(splits.test)] == list(np.diff(bounds))
    (note,) = protocol_notes(scenario)
    assert "SNLI train split absent" in note and "600" in note
    ours = ScenarioConfig(source="snli", partition="dirichlet", local_path=scenario.local_path, hub_id=None)
    assert protocol_notes(ours) == []


def test_unknown_procedure_is_an_error(tmp_path: Path) -> None:
    bad = ScenarioConfig(source="synthetic", tasks=("copy",), splits="official")
    with pytest.raises(ValueError, match="scenario.splits"):
        client_splits(bad, "0", seed=0)


# --- model side -----------------------------------------------------------------------------------------------------

class RecordingGenerate:
    def __init__(self, model) -> None:
        self.model, self.kwargs = model, {}

    def __call__(self, **kwargs):
        self.kwargs = kwargs
        return self.model.__class__.generate(self.model, **kwargs)


def test_decoding_follows_the_generation_config_or_is_greedy(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's decoding hands the model's generation config to model.generate; greedy is our own loop
    (tests/test_generation.py shows it equals model.generate's greedy tokens)."""
    model, tok = tiny
    spy = RecordingGenerate(model)
    monkeypatch.setattr(model, "generate", spy)
    generate(model, tok, ["abc"], 64, 4, "generation_config")
    assert spy.kwargs["num_beams"] == 1 and "do_sample" not in spy.kwargs and "eos_token_id" not in spy.kwargs
    spy.kwargs = {}
    generate(model, tok, ["abc"], 64, 4)
    assert spy.kwargs == {}
    with pytest.raises(ValueError, match="eval.decoding"):
        generate(model, tok, ["abc"], 64, 4, "beam")


def test_paper_training_path_end_to_end(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 adapters with the clean router and per-slot masks train; Adam gets eps 1e-6; payloads are fp32."""
    model, tok = tiny
    cfg = AdapterConfig(r=4, alpha=8.0, dropout=0.05, num_experts=6, top_k=2, router_input="clean", dtype="bfloat16")
    layers = inject(model, cfg)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    import_adapters(model, payload(create_bank(shapes, cfg, seed=0), {n: [0, 2, 3] for n in layers}))
    assert all(m.experts_A.dtype == torch.bfloat16 for m in layers.values())
    eps: list[float] = []
    adam = torch.optim.Adam

    def recording_adam(params, **kwargs):
        eps.append(kwargs["eps"])
        return adam(params, **kwargs)

    monkeypatch.setattr(train_module.torch.optim, "Adam", recording_adam)
    before = export_adapters(model)
    data = synthetic_task("copy", n=8, seed=0)
    metrics = train_steps(model, batches(tok, data, 4, 48, random.Random(0)), TrainConfig(steps=2, lr=1e-2,
                          batch_size=4, max_seq_len=48, adam_eps=1e-6), server_round=1)
    assert eps == [1e-6] and metrics["train_lb_loss"] > 0
    after = export_adapters(model)
    assert all(t.dtype == torch.float32 for t in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in after)
    result = evaluate(model, tok, [Example("copy: ab ->", "ab")], 48,
                      EvalConfig(max_new_tokens=3, batch_size=1, rouge="rouge_paper", decoding="generation_config"))
    assert result["metric"] == "rougeL_paper" and 0.0 <= result["score"] <= 1.0


def test_protocol_report_names_overrides_and_data_notes(tmp_path: Path) -> None:
    from amole.evaluation.fidelity import protocol_report

    path = snli_file(tmp_path, n=300)
    settings = compose(["scenario=snli_dir0.1", "protocol=paper", f"scenario.local_path={path}",
                        "eval.rouge=rouge_score"])
    report = protocol_report(settings)
    assert report["name"] == "paper"
    assert report["overridden"] == ["eval.rouge=rouge_score (preset: rouge_paper)"]
    assert len(report["notes"]) == 1 and "train split absent" in report["notes"][0]
    assert protocol_report(compose([]), with_data=False) == {"name": "default", "overridden": [], "notes": []}
