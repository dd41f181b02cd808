"""Round 0 (``federation.eval_round0``, the paper's ``--test_init``): every client scores its untrained model
before any training; the scores are the untrained backbone's own on the same test split, recorded in metrics and
set against the personalized scores in the run report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from amole.backbones.loader import load_base_model
from amole.compose import compose
from amole.data.scenario import client_splits
from amole.evaluation.evaluate import evaluate
from amole.evaluation.gains import Gain, gains_text, site_gains
from tests.test_simulation import OVERRIDES, simulate


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_round0_scores_the_untrained_backbone_and_the_report_compares(tmp_path: Path) -> None:
    state = simulate(tmp_path, "r0", overrides=("federation.eval_round0=true",))
    assert state is not None and state.round == 2
    round0 = state.metrics["round0"]
    assert round0["round"] == 0 and set(round0["clients"]) == {"0", "1", "2"} and not round0["absent"]
    settings = compose([*OVERRIDES, "federation.eval_round0=true"])
    model, tokenizer = load_base_model(settings.model, device="cpu")  # no adapters at all
    for client, got in round0["clients"].items():
        splits = client_splits(settings.scenario, client, settings.federation.seed)
        want = evaluate(model, tokenizer, splits.test, settings.train.max_seq_len, settings.eval)
        assert got["score"] == pytest.approx(want["score"], abs=1e-9) and got["test_n"] == want["n"]
        assert got["task"] == splits.task and got["metric"] == want["metric"]
    report = (tmp_path / "r0" / "report.md").read_text()
    assert "| 0 (untrained) |" in report and "Each site against its untrained model" in report
    assert len(site_gains(state.metrics)) == 3


def test_round0_gain_verdicts() -> None:
    ahead = Gain("0", "t", "accuracy", 0.2, 0.05, 0.5, 0.05)
    level = Gain("1", "t", "accuracy", 0.4, 0.1, 0.45, 0.1)
    behind = Gain("2", "t", "accuracy", 0.6, 0.02, 0.3, 0.02)
    assert (ahead.verdict, level.verdict, behind.verdict) == ("ahead", "within noise", "behind")
    assert math.isclose(ahead.diff_se, math.hypot(0.05, 0.05))
    assert Gain("3", "t", "rougeL", 0.1, math.nan, 0.2, math.nan).verdict == "no standard error"
    assert len(gains_text([ahead, level, behind])) == 4
