"""One client's round without Flower: what it uploads, and the differential-privacy option."""

from __future__ import annotations

from pathlib import Path

import torch

from amole.backbones.loader import load_base_model
from amole.client.round import ClientJob, train_and_score
from amole.compose import compose
from amole.data.scenario import client_splits
from amole.moe.bank import create_bank, payload
from amole.moe.model import inject


def run_client(overrides: list[str], site: Path):
    settings = compose(["model=tiny", "scenario=synthetic", "budget=smoke", *overrides])
    model, tok = load_base_model(settings.model, device="cpu")
    layers = inject(model, settings.adapter)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    held = {n: [0, 3] for n in layers}
    sent = payload(create_bank(shapes, settings.adapter, seed=0), held)
    splits = client_splits(settings.scenario, "1", settings.federation.seed)
    job = ClientJob(model, tok, splits, settings, 1, "1", site, "run")
    return settings, sent, train_and_score(job, sent)


def test_upload_is_what_was_sent_trained(tmp_path: Path) -> None:
    _, sent, result = run_client([], tmp_path)
    assert result.adapters.keys() == sent.keys()
    changed = [k for k in sent if not torch.equal(sent[k], result.adapters[k])]
    assert changed, "local training changed nothing"
    assert result.info == {"task": "upper", "metric": "rougeL"}
    assert {"score", "train_loss", "num_examples", "seconds"} <= set(result.metrics)
    # where the round's time went, reported so a budget can be sized by it
    phases = [result.metrics[k] for k in ("train_s", "eval_s", "stats_s")]
    assert all(p > 0 for p in phases) and sum(phases) <= result.metrics["seconds"]
    # The site keeps the model it was scored with, with its score and round.
    from amole.site.personal import read_meta

    meta = read_meta(tmp_path / "model" / "run" / "latest")
    assert (meta["round"], meta["score"], meta["client"]) == (1, result.metrics["score"], "1")


def test_amole_evaluate_on_the_test_split_reproduces_the_reported_score(tmp_path: Path, capsys) -> None:
    import json

    from amole.site.cli import main

    _, _, result = run_client([], tmp_path)
    out = tmp_path / "preds.jsonl"
    assert main(["evaluate", "--model", str(tmp_path / "model" / "run"), "--split", "test",
                 "--predictions", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["metric"] == result.info["metric"]
    assert round(printed["score"], 3) == round(result.metrics["score"], 3)
    assert len(out.read_text().splitlines()) == printed["n"]


def test_dp_noise_is_applied_before_upload_and_not_reproducible(tmp_path: Path) -> None:
    settings, _, clean = run_client([], tmp_path / "a")
    _, _, noisy = run_client(["assign.dp_eta=50", "assign.dp_clip=1000"], tmp_path / "b")
    _, _, again = run_client(["assign.dp_eta=50", "assign.dp_clip=1000"], tmp_path / "c")
    # Same seeds, so training is identical; only the statistics differ, and every one of them does.
    assert all(torch.equal(clean.adapters[k], noisy.adapters[k]) for k in clean.adapters)
    assert clean.stats.keys() == noisy.stats.keys()
    r, eta = settings.adapter.r, 50.0
    diffs = torch.stack([(noisy.stats[k] - clean.stats[k]).norm() for k in clean.stats])
    assert bool((diffs > 0).all()), "a clean statistic left the client"
    assert 0.2 * r / eta < diffs.mean().item() < 2.0 * r / eta  # |noise| ~ Gamma(r, rate eta), mean r/eta
    # A rerun with identical seeds draws other noise: the server cannot regenerate and subtract it.
    assert all(not torch.equal(noisy.stats[k], again.stats[k]) for k in noisy.stats)
