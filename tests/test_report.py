"""RunReport: the run directory is rebuilt from the metrics each round, and TensorBoard never logs a round twice."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from server_app.client_ids import client_order
from server_app.run_report import RunReport, load_metrics, plotted_modules, short_module_name

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODULES = [f"model.layers.{i}.self_attn.{p}" for i in range(3) for p in ("q_proj", "v_proj")]
SCORES = {1: [0.50, 0.60, 0.85], 2: [0.70, 0.62, 0.90]}  # client scores per round
N = 6


def _round(rnd: int, scores: dict[int, list[float]]) -> dict:
    """A round of 3 clients; client c holds experts c, c+1 (and c+2 in the last layer), so counts differ."""
    held = {m: [[c, c + 1] + ([c + 2] if "layers.2" in m else []) for c in range(3)] for m in MODULES}
    clients = {
        str(c): {
            "task": ["snli", "dolly", "ni"][c],
            "metric": "accuracy" if c == 0 else "rougeL",
            "score": scores[rnd][c],
            "train_loss": 2.0 / rnd + 0.1 * c,
            "experts": {m: len(held[m][c]) for m in MODULES},
            "experts_mean": sum(len(held[m][c]) for m in MODULES) / len(MODULES),
            "bytes_up": 150_000 * (c + 1),
            "bytes_down": 120_000 * (c + 1),
            "num_examples": 100,
            "seconds": 3.5,
        }
        for c in range(3)
    }
    return {"round": rnd, "seconds": 12.0 + rnd, "assign_seconds": 0.05, "clients": clients,
            "assignment": held, "num_experts": N}


def _metrics(num_rounds: int, scores: dict[int, list[float]] = SCORES) -> dict:
    run = {"name": "demo-test", "strategy": "fedamole", "scenario": "snli-dir0.1", "model": "tiny-llama",
           "num_rounds": 30, "num_clients": 3, "seed": 0, "started": "2025-01-01T00:00:00",
           "config": {"adapter": {"num_experts": N, "top_k": 2}}}
    return {"run": run, "rounds": [_round(r, scores) for r in range(1, num_rounds + 1)]}


def _tb_steps(run_dir: Path, tag: str = "score/mean") -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_update_writes_readable_run_dir(tmp_path: Path) -> None:
    metrics = _metrics(2)
    with RunReport(tmp_path) as report:
        report.update(_metrics(1))  # the server calls once per round with everything so far
        report.update(metrics)

    assert load_metrics(tmp_path) == metrics
    assert not list(tmp_path.glob("*.tmp"))

    md = (tmp_path / "report.md").read_text()
    means = {r: sum(s) / len(s) for r, s in SCORES.items()}
    for r, s in SCORES.items():
        assert f"| {r} | {means[r]:.3f} | {min(s):.3f} | {max(s):.3f} |" in md
    assert f"Final mean score: {means[2]:.3f}** (round 2)" in md
    assert f"best-round mean score: {max(means.values()):.3f}** (round 2)" in md
    assert "| 2 | ni | rougeL | 0.900 |" in md  # per-client row of the last round
    assert "demo-test" in md and "fedamole" in md and "2 / 30" in md

    pngs = ["score_by_round.png", "assignment_L0.q_proj.png", "assignment_L1.v_proj.png", "assignment_L2.v_proj.png"]
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in md

    steps = _tb_steps(tmp_path)
    assert [s for s, _ in steps] == [1, 2]
    assert [v for _, v in steps] == pytest.approx([means[1], means[2]])
    assert [s for s, _ in _tb_steps(tmp_path, "client_score/2")] == [1, 2]


def test_update_again_does_not_duplicate_tensorboard(tmp_path: Path) -> None:
    metrics = _metrics(2)
    with RunReport(tmp_path) as report:
        report.update(metrics)
        report.update(metrics)
    md = (tmp_path / "report.md").read_text()
    with RunReport(tmp_path) as report:
        report.update(copy.deepcopy(metrics))
    assert [s for s, _ in _tb_steps(tmp_path)] == [1, 2]
    assert (tmp_path / "report.md").read_text() == md  # idempotent


def test_resumed_run_appends_only_new_rounds(tmp_path: Path) -> None:
    with RunReport(tmp_path) as report:
        report.update(_metrics(1))
    with RunReport(tmp_path) as resumed:
        resumed.update(_metrics(3, {**SCORES, 3: [0.8, 0.7, 0.9]}))
    assert [s for s, _ in _tb_steps(tmp_path)] == [1, 2, 3]
    assert "best round (3)" not in (tmp_path / "report.md").read_text()  # best is the last: no second table


def test_best_round_table_when_score_drops(tmp_path: Path) -> None:
    metrics = _metrics(2)
    metrics["rounds"][1]["clients"]["0"]["score"] = 0.0  # round 2 mean drops below round 1
    RunReport(tmp_path, tensorboard=False).update(metrics)
    md = (tmp_path / "report.md").read_text()
    assert "## Clients, best round (1)" in md
    assert f"best-round mean score: {sum(SCORES[1]) / 3:.3f}** (round 1)" in md
    assert not (tmp_path / "tb").exists()


def test_load_metrics_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text('{"run": {}, "rounds": [')
    with pytest.raises(ValueError, match="corrupt"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="not a metrics file"):
        load_metrics(tmp_path)


def test_empty_run_and_names(tmp_path: Path) -> None:
    RunReport(tmp_path, tensorboard=False).update({"run": {"name": "fresh"}, "rounds": []})
    assert "No round finished yet" in (tmp_path / "report.md").read_text()
    assert short_module_name("model.layers.12.self_attn.q_proj") == "L12.q_proj"
    assert short_module_name("lm_head") == "lm_head"
    assert client_order(["10", "2", "1"]) == ["1", "2", "10"]
    mods = [f"model.layers.{i}.mlp.up_proj" for i in (10, 2, 0)]
    assert plotted_modules(mods) == ["model.layers.0.mlp.up_proj", "model.layers.2.mlp.up_proj",
                                     "model.layers.10.mlp.up_proj"]


def test_report_states_the_privacy_guarantee_per_round(tmp_path: Path) -> None:
    from amole.server.privacy import Guarantee

    metrics = _metrics(2)
    (tmp_path / "off").mkdir()
    RunReport(tmp_path / "off").update(metrics)
    assert "Differential privacy of the routing statistics is off" in (tmp_path / "off" / "report.md").read_text()
    for rnd in metrics["rounds"]:
        per = {c: Guarantee(100.0, 0.5, 10 + int(c)).to_dict() for c in rnd["clients"]}
        rnd["privacy"] = {"eta": 100.0, "clip": 0.5, "epsilon_per_vector": 100.0,
                          "epsilon_round_max": max(g["epsilon_round"] for g in per.values()), "clients": per}
    rnd["clients"]["1"]["score"] = float("nan")  # a score left out
    RunReport(tmp_path).update(metrics)
    text = (tmp_path / "report.md").read_text()
    assert "ε per vector = 2ηc" in text
    assert "| 1 | 100 | 0.5 | 100 | 1200 | 1200 |" in text and "| 2 | 100 | 0.5 | 100 | 1200 | 2400 |" in text
    assert "| 2 | 0.800 |" in text  # the mean over the two scores that count: (0.70 + 0.90) / 2
