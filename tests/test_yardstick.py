"""The no-model reference scores: majority training answer on the test split, and the uniform guess."""

from __future__ import annotations

import pytest

from amole.data import ClientSplits, Example
from tools.yardstick import main, majority_score


def choice(answer: str) -> Example:
    choices = ("Yes", "Maybe", "No")
    return Example("p", answer, choices, choices.index(answer))


def test_majority_and_uniform_for_multiple_choice() -> None:
    splits = ClientSplits(train=[choice("No")] * 3 + [choice("Yes")], embed=[], eval=[],
                          test=[choice("No"), choice("Yes"), choice("No"), choice("Maybe")])
    assert majority_score(splits) == (pytest.approx(0.5), pytest.approx(1 / 3), "accuracy")


def test_majority_answer_for_generation_is_scored_by_rouge() -> None:
    splits = ClientSplits(train=[Example("p", "red apple")] * 2 + [Example("p", "x")], embed=[], eval=[],
                          test=[Example("p", "red apple"), Example("p", "green pear")])
    score, guess, metric = majority_score(splits)
    assert metric == "rougeL" and guess is None and score == pytest.approx(0.5)


def test_cli_prints_a_row_per_client(capsys) -> None:
    assert main(["model=tiny", "scenario=synthetic", "budget=smoke"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line[:3] in ("| 0", "| 1", "| 2")]
    assert len(rows) == 3 and "mean over clients: majority answer" in out


def test_task_probe_scores_each_task_before_and_after_training(capsys) -> None:
    """tools.task_probe: per task the yardstick and a score with its SE for round 0 (untrained) and each round."""
    from tools import task_probe

    rows = task_probe.main(["--tasks", "upper", "sort", "--rounds", "1",
                            "-o", "model=tiny", "scenario=synthetic", "budget=smoke"])
    assert [r["task"] for r in rows] == ["upper", "sort"]
    for row in rows:
        assert len(row["scores"]) == 2 and row["test_n"] > 0 and 0.0 <= row["yardstick"] <= 1.0
        assert all(0.0 <= s <= 1.0 and se >= 0.0 for s, se in row["scores"])
    out = capsys.readouterr().out
    assert "| upper |" in out and "| sort |" in out and "last − yardstick in SE" in out
