"""tools.results on synthetic run directories: mean ± std over seeds, relative gain, the 'does not win' sentence,
the CSV files (the experiment runner's tests are in test_experiment_runner.py)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tools.results import RUN_COLUMNS, SUMMARY_COLUMNS, collect, main, relative_gain, summarize, write_results

CONFIG = {
    "model": {"name": "smollm2-135m", "quantization": "4bit", "dtype": "float32"},
    "adapter": {"num_experts": 8, "top_k": 2, "r": 8, "shared_expert": True},
    "assign": {"mode": "rsea", "clients_per_expert": 2, "min_experts": 2, "max_experts": 6},
    "train": {"steps": 10, "batch_size": 4, "max_seq_len": 256, "lr": 0.001},
    "eval": {"max_new_tokens": 24},
    "scenario": {"name": "bigbench_tasks", "test_cap": 32, "examples_per_task": 400, "local_path": None},
    "federation": {"num_rounds": 2, "num_clients": 2, "seed": 0, "strategy": "fedamole", "runs_dir": "x"},
}


def make_run(root: Path, strategy: str, seed: int, scores: list[list[float]], *, scenario: str = "bigbench_tasks",
             budget: str = "cpu_small", planned: int | None = None, status: str | None = None,
             steps: int = 10, experiment: bool = True, config: dict | None = None, tasks: list[str] | None = None,
             last: list[dict] | None = None) -> Path:
    """A run directory as the runner leaves it: metrics.json (server_app.run_report's schema) and experiment.json.

    ``config``: the stored config (default CONFIG); ``tasks``: the clients' tasks; ``last``: per client, fields
    added to its last-round record (score_se, test_n)."""
    name = f"{scenario}-{strategy}-s{seed}"
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = json.loads(json.dumps(config or CONFIG))
    config["federation"].update(strategy=strategy, seed=seed, num_rounds=len(scores))
    config["scenario"]["name"] = scenario
    config["train"]["steps"] = steps
    if strategy != "fedamole":
        config["adapter"]["num_experts"] = 0
    rounds = [{"round": i + 1, "seconds": 10.0 * (i + 1), "assign_seconds": 0.01, "num_experts": 8,
               "clients": {str(c): {"task": tasks[c] if tasks else f"t{c}", "metric": "accuracy", "score": s,
                                    "train_loss": 1.0,
                                    "experts": {}, "experts_mean": 4.0, "bytes_up": 2000 * (c + 1),
                                    "bytes_down": 1000, "num_examples": 10, "seconds": 1.0,
                                    "train_s": 0.6, "eval_s": 0.3}
                           for c, s in enumerate(round_scores)},
               "assignment": {}} for i, round_scores in enumerate(scores)]
    for c, fields in enumerate(last or []):
        rounds[-1]["clients"][str(c)].update(fields)
    metrics = {"run": {"name": name, "strategy": strategy, "scenario": scenario, "model": "smollm2-135m",
                       "num_rounds": len(scores), "num_clients": 2, "seed": seed, "started": "x", "config": config},
               "rounds": rounds}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if experiment:
        planned = planned or len(scores)
        exp = {"name": name, "command": f"python -m tools.experiment -m budget={budget} strategy=...",
               "job_command": f"python -m tools.experiment budget={budget} strategy={strategy} seed={seed}",
               "choices": {"budget": budget, "strategy": strategy}, "budget": budget, "planned_rounds": planned,
               "status": status or ("completed" if planned <= len(scores) else "incomplete"),
               "host": {"cpus": 2, "memory_gb": 24.0, "gpus": []},
               "peak_memory": {"peak_total_mb": 3000.0 + seed, "peak_client_mb": 900.0, "peak_server_mb": 500.0}}
        if status == "failed":
            exp["error"] = "RuntimeError: boom"
        (run_dir / "experiment.json").write_text(json.dumps(exp))
    return run_dir


def test_mean_std_gain_and_csv(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # FedAMoLE: last-round means 0.6 and 0.8 -> 0.7 ± 0.1414; best baseline fedit_ft 0.5 (seed 0 only) -> the gain
    # on the seed both ran is (0.6 - 0.5) / 0.5 = +20 %, not the +40 % of means over different splits.
    make_run(runs, "fedamole", 0, [[0.1, 0.3], [0.5, 0.7]])
    make_run(runs, "fedamole", 1, [[0.9, 0.9], [0.7, 0.9]])
    lost = make_run(runs, "fedit_ft", 0, [[0.4, 0.4], [0.5, 0.5]])
    metrics = json.loads((lost / "metrics.json").read_text())
    metrics["rounds"][1]["rejected"] = {"1": "client error: actor died"}  # one reply lost in round 2
    (lost / "metrics.json").write_text(json.dumps(metrics))
    make_run(runs, "fedit", 0, [[0.3, 0.3], [0.2, float("nan")]])  # a NaN client score is left out
    make_run(runs, "local", 0, [[0.45, 0.45]], planned=3)  # incomplete: listed, not in the table
    make_run(runs, "local", 1, [[0.1, 0.1]], planned=2, status="failed")
    (runs / ".hydra" / "x").mkdir(parents=True)  # hidden folders are not runs
    (runs / ".hydra" / "x" / "metrics.json").write_text("{}")

    rows = collect(runs)
    assert len(rows) == 6
    by = {(r["strategy"], r["seed"]): r for r in rows}
    ours = by[("fedamole", 0)]
    assert ours["final_score"] == pytest.approx(0.6) and ours["best_score"] == pytest.approx(0.6)
    assert by[("fedamole", 1)]["best_score"] == pytest.approx(0.9) and by[("fedamole", 1)]["best_round"] == 1
    assert ours["kb_up_per_client_round"] == pytest.approx(3.0)  # (2000 + 4000) / 2 bytes
    assert ours["kb_down_per_client_round"] == pytest.approx(1.0)
    assert ours["seconds_per_round"] == pytest.approx(15.0)
    assert (ours["client_s"], ours["train_s"], ours["eval_s"]) == pytest.approx((1.0, 0.6, 0.3))
    assert by[("fedit", 0)]["final_score"] == pytest.approx(0.2)
    assert by[("fedit_ft", 0)]["lost_client_rounds"] == 1 and ours["lost_client_rounds"] == 0
    assert by[("local", 0)]["status"] == "incomplete" and by[("local", 1)]["status"] == "failed"

    table = summarize(rows)
    assert set(table) == {"fedamole", "fedit_ft", "fedit"}
    assert table["fedamole"]["n_seeds"] == 2
    assert table["fedamole"]["score_mean"] == pytest.approx(0.7)
    assert table["fedamole"]["score_std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.6, 0.8
    assert table["fedamole"]["peak_total_mb"] == 3001.0
    assert math.isnan(table["fedit_ft"]["score_std"])
    gain, best, sentence = relative_gain(table)
    assert best == "fedit_ft" and gain == pytest.approx(0.2)
    assert "(fedit_ft), on the seed both ran (0): **+20.0%**" in sentence and "does not win" not in sentence
    assert "Over all their seeds (FedAMoLE 0, 1; fedit_ft 0) the means are 0.7000 and 0.5000." in sentence

    paths, _ = write_results(runs, tmp_path / "docs")
    md = paths["md"].read_text()
    assert "## bigbench_tasks — budget `cpu_small`" in md
    assert "0.7000 ± 0.1414" in md and "+20.0%" in md
    assert "| 1 (1 / 0) |" in md  # s per client·round (train / evaluate)
    assert "python -m tools.experiment -m budget=cpu_small strategy=..." in md
    assert "smollm2-135m (4bit, float32)" in md and "2 clients" in md and "10 local steps × batch 4" in md
    assert "`bigbench_tasks-local-s0` incomplete (1/3 rounds)" in md
    assert "Client·rounds lost (a reply rejected or missing; the run went on without it): " \
           "`bigbench_tasks-fedit_ft-s0` 1." in md
    assert "`bigbench_tasks-local-s1` failed (1/2 rounds): RuntimeError: boom" in md
    with open(paths["csv"]) as f:
        summary = list(csv.DictReader(f))
    assert list(summary[0]) == SUMMARY_COLUMNS
    assert [r["strategy"] for r in summary] == ["fedamole", "fedit", "fedit_ft"]
    assert float(summary[0]["score_mean"]) == pytest.approx(0.7)
    assert float(summary[0]["score_std"]) == pytest.approx(0.141421, abs=1e-5)
    assert float(summary[0]["gain_vs_best_baseline"]) == pytest.approx(0.2)
    assert summary[0]["best_baseline"] == "fedit_ft" and summary[1]["gain_vs_best_baseline"] == ""
    with open(paths["runs_csv"]) as f:
        per_run = list(csv.DictReader(f))
    assert list(per_run[0]) == RUN_COLUMNS and len(per_run) == 6


def test_per_client_and_per_round_tables_and_notes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "fedamole", 0, [[0.1, 0.3], [0.5, 0.7]])
    make_run(runs, "fedamole", 1, [[0.9, 0.9], [0.7, 0.9]])
    make_run(runs, "local", 0, [[0.2, 0.2], [0.4, 0.6]])
    notes = tmp_path / "notes.md"
    notes.write_text("## What was found\n\nWritten by hand.\n")
    md = write_results(runs, tmp_path / "docs", notes=notes)[0]["md"].read_text()
    # Client 0 (task t0): fedamole's last rounds 0.5 and 0.7 -> 0.6; local 0.4. Client 1: (0.7 + 0.9) / 2, 0.6.
    # The yardstick column is a dash: these fake runs' stored scenario lists no tasks (the data cannot be rebuilt).
    assert "| client | task | yardstick | fedamole | local |" in md
    assert "Per client, last round (mean over each strategy's seeds, which differ: fedamole 0, 1; local 0; " in md
    assert "| 0 | t0 | – | 0.6000 | 0.4000 |" in md and "| 1 | t1 | – | 0.8000 | 0.6000 |" in md
    assert "The yardstick could not be computed: seed 0, client 0: ValueError: client 0 has no task" in md
    assert "; and 1 more." in md  # four (seed, client) reasons, three shown
    # Round 1: fedamole (0.2 + 0.9) / 2 = 0.55, local 0.2; round 2: 0.7 and 0.5.
    assert "| 1 | 0.5500 | 0.2000 |" in md and "| 2 | 0.7000 | 0.5000 |" in md
    assert "## What was found\n\nWritten by hand." in md
    # fedamole - local per (seed 0, client): 0.5 - 0.4, 0.7 - 0.6 -> +0.1 each (seed 1 has no local run).
    assert "Paired by seed and client (2 pairs), fedamole − local = +0.1000 ± 0.0000" in md
    # Seeds differ (local ran seed 0 only): the gain is taken on the shared seed, 0.6 against 0.5.
    assert ("FedAMoLE's relative gain over the best baseline (local), on the seed both ran (0): **+20.0%** "
            "((fedamole − local) / local = (0.6000 − 0.5000) / 0.5000).") in md
    assert "Written by hand" not in write_results(runs, tmp_path / "docs2", notes=tmp_path / "none.md")[0][
        "md"].read_text()


def test_fedamole_that_does_not_win_is_said_so(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "fedamole", 0, [[0.4, 0.4]])
    make_run(runs, "fedamole", 1, [[0.5, 0.5]])
    make_run(runs, "local", 0, [[0.5, 0.5]])
    make_run(runs, "local", 1, [[0.6, 0.6]])
    gain, best, sentence = relative_gain(summarize(collect(runs)))
    assert best == "local" and gain == pytest.approx((0.45 - 0.55) / 0.55)
    assert "FedAMoLE does not win here" in sentence and "-18.2%" in sentence
    assert "within one standard deviation" not in sentence  # 0.1 apart, std 0.0707
    assert "shared seed" not in sentence  # both ran seeds 0 and 1

    # A one-seed baseline on an easy split (seed 2: 0.7) does not outrank one that FedAMoLE gains less over on the
    # seeds both ran: fedit's 0.7 against FedAMoLE's 0.8 on seed 2 is -12.5 %, local's -18.2 % on seeds 0-1.
    make_run(runs, "fedamole", 2, [[0.8, 0.8]])
    make_run(runs, "fedit", 2, [[0.7, 0.7]])
    gain, best, sentence = relative_gain(summarize(collect(runs)))
    assert best == "local" and gain == pytest.approx((0.45 - 0.55) / 0.55)
    assert "(local), on the seeds both ran (0, 1): **-18.2%**" in sentence

    runs2 = tmp_path / "runs2"
    make_run(runs2, "fedamole", 0, [[0.5, 0.5]])
    assert "no relative gain" in relative_gain(summarize(collect(runs2)))[2]


def test_tables_split_by_scenario_and_budget(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs / "a", "fedamole", 0, [[0.5, 0.5]])
    make_run(runs / "a", "fedamole", 0, [[0.2, 0.2]], scenario="snli_dir0.1")
    make_run(runs / "b", "fedamole", 0, [[0.9, 0.9]], budget="gpu", steps=200)  # another budget, same names
    make_run(runs / "c", "fedamole", 1, [[0.7, 0.7]], steps=20)  # same preset, another steps override
    make_run(runs / "d", "fedit", 0, [[0.1, 0.1]], experiment=False)  # not made by the runner
    rows = collect(runs)
    paths, _ = write_results(runs, tmp_path / "docs")
    md = paths["md"].read_text()
    assert md.count("## bigbench_tasks — budget `cpu_small`") == 2
    assert md.count("## bigbench_tasks — budget `gpu`") == 1 and md.count("## snli_dir0.1") == 1
    # One plot per table, linked relative to results.md; two tables of one scenario and budget get two files.
    for png in ("results_bigbench_tasks_cpu_small.png", "results_bigbench_tasks_cpu_small_2.png",
                "results_bigbench_tasks_gpu.png", "results_snli_dir0.1_cpu_small.png"):
        assert (tmp_path / "docs" / png).is_file() and f"]({png})" in md, png
    assert "budget `?`" in md and "no command recorded" in md
    assert len(rows) == 5
    # A run stored before a setting existed groups with runs that leave it null; a set value splits the table.
    from tools.results import budget_fingerprint

    cfg, key = rows[0]["_config"], rows[0]["_fingerprint"]
    assert budget_fingerprint({**cfg, "scenario": {**cfg["scenario"], "first_examples": None}}) == key
    assert budget_fingerprint({**cfg, "scenario": {**cfg["scenario"], "first_examples": 9}}) != key
    # A number stored as 16 in one config and 16.0 in another (two versions of the runner) is one value.
    # (The untrained references' keys follow the same rule: test_results_yardstick.)
    alpha = {**cfg, "adapter": {**cfg["adapter"], "alpha": 16}}
    assert budget_fingerprint(alpha) == budget_fingerprint({**cfg, "adapter": {**cfg["adapter"], "alpha": 16.0}})


def test_cli_without_runs(tmp_path: Path, capsys) -> None:
    assert main(["--runs", str(tmp_path / "none"), "--out", str(tmp_path / "docs")]) == 1
    (tmp_path / "empty").mkdir()
    assert main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "docs")]) == 0
    assert "No run directory found" in (tmp_path / "docs" / "results.md").read_text()


def test_assignment_churn_kept_share_and_concentration() -> None:
    from tools.results_churn import assignment_churn

    def rnd(n: int, held: list[list[int]]) -> dict:
        return {"round": n, "assignment_clients": ["0", "1"], "assignment": {"m": held}}

    same = [rnd(1, [[0], [1]]), rnd(2, [[0], [1]]), rnd(3, [[0], [1]])]
    assert assignment_churn(same) == {"kept_by_round": {2: 1.0, 3: 1.0}, "concentration": 1.0}
    swapped = [rnd(1, [[0], [1]]), rnd(2, [[1], [0]]), rnd(3, [[0], [1]]), rnd(4, [[1], [0]])]
    churn = assignment_churn(swapped)
    assert churn["kept_by_round"] == {2: 0.0, 3: 0.0, 4: 0.0} and churn["concentration"] == 0.5
    assert assignment_churn([{"round": 1, "assignment_clients": ["0"], "assignment": {"m": [[]]}}]) == {}


def test_headline_best_round_includes_round_zero_and_pairs_both_metrics() -> None:
    from tools.results_headline import headline, headline_lines, paired_on

    def run(strategy: str, rounds: dict[int, dict[str, float]], untrained: dict[str, float], round0=None) -> dict:
        last = max(rounds)
        return {"strategy": strategy, "seed": 0, "status": "completed", "final_score": sum(rounds[last].values()) / 2,
                "_round_clients": rounds, "_round0": round0 or {},
                "_untrained": {c: {"score": s} for c, s in untrained.items()},
                "_last_clients": {c: {"score": s} for c, s in rounds[last].items()}}

    worse = run("fedamole", {1: {"0": 0.1, "1": 0.2}, 2: {"0": 0.2, "1": 0.2}}, {"0": 0.5, "1": 0.5})
    assert headline(worse) == (0, {"0": 0.5, "1": 0.5})  # training never beat the untrained model: round 0 wins
    recorded = run("static", {1: {"0": 0.6, "1": 0.7}}, {}, round0={"0": 0.5, "1": 0.5})
    assert headline(recorded) == (1, {"0": 0.6, "1": 0.7})  # the run's own round 0 when it recorded one
    assert headline(run("random", {1: {"0": 0.6}}, {})) == (None, {})  # round 0 unknown: no headline
    d, _, n = paired_on([worse, recorded], "fedamole", "static", last=False)
    assert n == 2 and math.isclose(d, ((0.5 - 0.6) + (0.5 - 0.7)) / 2)
    d, _, n = paired_on([worse, recorded], "fedamole", "static", last=True)
    assert n == 2 and math.isclose(d, ((0.2 - 0.6) + (0.2 - 0.7)) / 2)
    text = "\n".join(headline_lines([worse, recorded], ["fedamole", "static"], None))
    assert "| fedamole | 0.2000 | 0.5000 (seed 0: round 0) | 0 |" in text and "fedamole − static: last round" in text
    # A seed whose round 0 is unknown is named as left out of the best-round mean, not silently averaged away.
    unknown = {**run("fedamole", {1: {"0": 0.4, "1": 0.4}}, {}), "seed": 1}
    text = "\n".join(headline_lines([worse, unknown], ["fedamole"], None))
    assert "| fedamole | 0.3000 | 0.5000 (seed 0: round 0; seed 1: no round 0) | 0, 1 |" in text
    # Seeds in the cell in the seed column's numeric order (2 before 10).
    ten, two = ({**worse, "seed": 10}, {**worse, "seed": 2})
    assert "(seed 2: round 0; seed 10: round 0) | 2, 10 |" in "\n".join(headline_lines([ten, two], ["fedamole"], None))


def test_machine_line_names_the_cpu_where_recorded() -> None:
    """CPU timings differ several-fold between 2-core hosts: the table names the CPU model where the run recorded
    it (tools.resources.host_info), and stays as it was for runs from before."""
    from tools.resources import host_info
    from tools.results_table import host_line

    assert "cpu" in host_info()
    runs = [{"_host": {"cpus": 2, "memory_gb": 23.5, "gpus": [], "cpu": "AMD EPYC"}},
            {"_host": {"cpus": 2, "memory_gb": 23.5, "gpus": []}}]
    assert host_line(runs) == "2 CPU cores (AMD EPYC), 23.5 GB RAM, no GPU; 2 CPU cores, 23.5 GB RAM, no GPU"
