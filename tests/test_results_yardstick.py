"""tools.results on fake runs of a scenario whose data exists offline (synthetic, two multiple-choice tasks):
the paired difference against the best baseline (fedsa_lora), the yardstick section and its "above by more than
two standard errors" counts, the yardstick column, and the plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from amole.compose import compose
from tests.test_results import make_run
from tools.results import collect, write_results
from tools.results_table import BASELINES, paired_difference
from tools.results_yardstick import client_se

TASKS = ["first_letter", "vowel_parity"]  # 8 test examples each; with 4 and 2 choices


def synthetic_config() -> dict:
    return compose(["model=tiny", "scenario=synthetic", "budget=smoke", f"scenario.tasks=[{','.join(TASKS)}]",
                    "federation.num_clients=2"]).to_dict()


def fake_runs(root: Path) -> Path:
    """Two seeds x fedamole (score_se recorded), fedsa_lora (an older run: no score_se, no test_n) and local."""
    config = synthetic_config()
    runs = root / "runs"
    n8 = {"test_n": 8}
    for strategy, seed, last, extra in [
        ("fedamole", 0, [1.0, 0.75], [{"score_se": 0.0, **n8}, {"score_se": 0.1, **n8}]),
        ("fedamole", 1, [0.75, 0.75], [{"score_se": 0.15, **n8}, {"score_se": 0.1, **n8}]),
        ("fedsa_lora", 0, [0.5, 0.5], None),
        ("fedsa_lora", 1, [0.875, 0.625], None),
        ("local", 0, [0.5, 0.5], [{"score_se": 0.05, **n8}, {"score_se": 0.05, **n8}]),
        ("local", 1, [0.5, 0.625], [{"score_se": 0.05, **n8}, {"score_se": 0.05, **n8}]),
    ]:
        make_run(runs, strategy, seed, [[0.25, 0.25], last], scenario="synthetic", budget="smoke", config=config,
                 tasks=TASKS, last=extra)
    return runs


def test_yardstick_paired_difference_and_plot(tmp_path: Path) -> None:
    assert "fedsa_lora" in BASELINES and "static" not in BASELINES and "random" not in BASELINES
    runs = fake_runs(tmp_path)
    rows = collect(runs)
    # Best baseline: fedsa_lora (0.625 against local's 0.53). Paired by (seed, client): 0.5, 0.25, -0.125, 0.125.
    d, se, n = paired_difference(rows, "fedamole", "fedsa_lora")
    diffs = [0.5, 0.25, -0.125, 0.125]
    m = sum(diffs) / 4
    assert n == 4 and d == pytest.approx(m)
    assert se == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in diffs) / 3) / 2)

    paths, _ = write_results(runs, tmp_path / "docs")
    md = paths["md"].read_text()
    assert "over the best baseline (fedsa_lora)" in md
    assert f"fedamole − fedsa_lora = +0.1875 ± {se:.4f}" in md and "within two standard errors of zero" in md
    # Yardsticks (majority training answer vs uniform guess, on the rebuilt 8-example test splits):
    # first_letter: majority 0, uniform 1/4 -> 0.25 both seeds; vowel_parity: 0.5 (seed 0) and 0.625 (seed 1).
    assert "| 0 | first_letter | accuracy | 8 | 0.0000 | 0.2500 | 0.2500 |" in md
    assert "| 1 | vowel_parity | accuracy | 8 | 0.5625 | 0.5000 | 0.5625 |" in md
    assert "Mean yardstick over clients (mean over seeds 0, 1): **0.4062**." in md
    # fedamole, recorded SEs: 1.0 - 0.25 > 0; 0.25 > 0.2; 0.5 > 0.3; 0.125 < 0.2 -> 3 of 4.
    assert "- **fedamole**: 3 of 4 (client, seed) pairs" in md
    # fedsa_lora, binomial SE with n = 8 from the rebuilt split: only seed 1's 0.875 on first_letter is clear.
    assert "- fedsa_lora: 1 of 4 (client, seed) pairs" in md
    assert "- local: 2 of 4 (client, seed) pairs" in md  # 0.5 - 0.25 > 0.1 on first_letter, both seeds
    assert "| client | task | yardstick | fedamole | fedsa_lora | local |" in md
    assert "| 0 | first_letter | 0.2500 | 0.8750 | 0.6875 | 0.5000 |" in md
    png = tmp_path / "docs" / "results_synthetic_smoke.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](results_synthetic_smoke.png)" in md
    with open(paths["csv"]) as f:
        summary = {r["strategy"]: r for r in csv.DictReader(f)}
    assert summary["fedamole"]["above_yardstick"] == "3/4"
    assert float(summary["fedamole"]["yardstick_mean"]) == pytest.approx(0.40625)


def test_standard_error_of_a_client_score() -> None:
    assert client_se({"score": 0.5, "score_se": 0.07}, None) == 0.07  # recorded wins
    assert client_se({"score": 0.5, "metric": "accuracy", "test_n": 4}, None) == pytest.approx(0.25)  # binomial
    assert client_se({"score": 0.5, "metric": "accuracy"}, {"test_n": 25}) == pytest.approx(0.1)  # rebuilt n
    assert client_se({"score": 0.5, "metric": "rougeL", "test_n": 4}, None) is None  # unknown
    assert client_se({"score": 0.5, "score_se": float("nan"), "metric": "rougeL"}, None) is None


def test_yardstick_that_cannot_be_computed_is_said_so(tmp_path: Path) -> None:
    config = synthetic_config()
    config["scenario"]["source"] = "no_such_source"
    runs = tmp_path / "runs"
    for seed in (0, 1):
        make_run(runs, "fedamole", seed, [[0.5, 0.5]], scenario="synthetic", config=config, tasks=TASKS)
    md = write_results(runs, tmp_path / "docs")[0]["md"].read_text()
    assert "The yardstick could not be computed: seed 0, client 0: ValueError: unknown scenario source" in md
    assert "| 0 | first_letter | – | 0.5000 |" in md  # the table still renders, with a dash
    assert (tmp_path / "docs" / "results_synthetic_cpu_small.png").is_file()  # plotted without a yardstick line
    md = write_results(runs, tmp_path / "docs2", yardstick=False)[0]["md"].read_text()
    assert "could not be computed: skipped (--no-yardstick)" in md


def test_kept_yardstick_serves_a_machine_without_the_data(tmp_path: Path, monkeypatch, capsys) -> None:
    """tools.yardstick --out keeps each client's cells under a key of the settings that decide them (where the data
    sits is not one); results uses them for runs of those settings when the data cannot be rebuilt here."""
    from tools.yardstick import main as yardstick_main

    runs = fake_runs(tmp_path)
    overrides = ["model=tiny", "scenario=synthetic", "budget=smoke", f"scenario.tasks=[{','.join(TASKS)}]",
                 "federation.num_clients=2"]
    for seed in (0, 1):
        assert yardstick_main(["--out", str(runs / "yardstick"), *overrides, f"federation.seed={seed}",
                               "scenario.local_dir=/elsewhere"]) == 0
    assert "kept in" in capsys.readouterr().out
    live = write_results(runs, tmp_path / "live")[0]["md"].read_text()
    assert "Mean yardstick over clients (mean over seeds 0, 1): **0.4062**." in live
    # Another machine: the data cannot be rebuilt (any rebuild fails), the kept cells give the same table.
    monkeypatch.setattr("tools.results_yardstick._client_yardstick",
                        lambda *a: pytest.fail("rebuilt data although the cells are kept"))
    kept = write_results(runs, tmp_path / "kept")[0]["md"].read_text()
    assert kept.split("**Yardstick**")[1] == live.split("**Yardstick**")[1]
    # Without the file, the table says why it has none.
    for path in (runs / "yardstick").iterdir():
        path.unlink()
    def no_data(*_: object) -> None:
        raise FileNotFoundError("no data here")

    monkeypatch.setattr("tools.results_yardstick._client_yardstick", no_data)
    assert "could not be computed: seed 0, client 0: FileNotFoundError: no data here" in write_results(
        runs, tmp_path / "none")[0]["md"].read_text()


def test_untrained_scores_join_the_tables_of_the_runs_they_match(tmp_path: Path, monkeypatch) -> None:
    """tools.untrained scores the bare backbone per client into a file keyed by the settings that decide the
    score; results matches it to runs by their stored config, shows it per client and counts who beats it."""
    import tools.untrained as untrained
    from tools.results_yardstick import above_untrained, table_untrained

    runs = fake_runs(tmp_path)
    docs = {}
    for seed in (0, 1):
        settings = compose(["model=tiny", "scenario=synthetic", "budget=smoke", f"scenario.tasks=[{','.join(TASKS)}]",
                            "federation.num_clients=2", f"federation.seed={seed}"])
        path = untrained.reference_path(runs / "untrained", settings)
        docs[seed] = untrained.score_clients(settings, ["0", "1"], path)
        assert path.name.startswith(f"untrained_synthetic-s{seed}-") and path.is_file()
        assert [docs[seed]["clients"][c]["test_n"] for c in "01"] == [8, 8]
        assert not any("gen_tokens" in docs[seed]["clients"][c] for c in "01")  # multiple choice: no answer length
    # A rerun finds both clients scored and loads no model.
    monkeypatch.setattr("amole.backbones.loader.load_base_model", lambda *a, **k: pytest.fail("rescored a client"))
    assert untrained.score_clients(settings, ["0", "1"], path)["clients"] == docs[1]["clients"]
    # The runs' stored configs (any strategy) give the same key as the settings composed here.
    rows = collect(runs)
    assert all(set(r["_untrained"]) == {"0", "1"} for r in rows)
    cells = table_untrained(rows)
    assert cells[("1", "0")]["score"] == docs[1]["clients"]["0"]["score"]
    expected = 0
    for seed, last in ((0, [1.0, 0.75]), (1, [0.75, 0.75])):  # fedamole's last-round scores and SEs, as in fake_runs
        se = {0: [0.0, 0.1], 1: [0.15, 0.1]}[seed]
        for c in (0, 1):
            ref = docs[seed]["clients"][str(c)]
            expected += last[c] - ref["score"] > 2 * math.sqrt(se[c] ** 2 + ref["score_se"] ** 2)
    assert above_untrained(rows, "fedamole", cells) == (expected, 4)

    paths, _ = write_results(runs, tmp_path / "docs")
    md = paths["md"].read_text()
    mean_u = sum(d["clients"][c]["score"] for d in docs.values() for c in "01") / 4
    assert "**Untrained model** (`tools.untrained`" in md and f"**{mean_u:.4f}**" in md
    assert f"- **fedamole**: {expected} of 4 (client, seed) pairs" in md.split("**Untrained model**")[1]
    assert "| client | task | yardstick | untrained | fedamole | fedsa_lora | local |" in md
    with open(paths["csv"]) as f:
        summary = {r["strategy"]: r for r in csv.DictReader(f)}
    assert float(summary["fedamole"]["untrained_mean"]) == pytest.approx(mean_u)
    assert summary["fedamole"]["above_untrained"] == f"{expected}/4"
    # A file holds one key's scores: scoring other settings into it is refused, nothing is overwritten.
    with pytest.raises(ValueError, match="other settings"):
        untrained.score_clients(compose(["model=tiny", "scenario=synthetic", "budget=smoke"]), ["0"], path)


def test_committed_untrained_references_keep_their_keys() -> None:
    """A setting added later, or a rule of the key, must not orphan the untrained scores already committed: each
    file is indexed under the key its stored config gives today (else results silently drops the untrained
    column)."""
    import json

    import tools.untrained as untrained

    runs_dir = Path(__file__).parents[1] / "docs" / "runs"
    files = sorted(runs_dir.rglob(f"{untrained.FILE_PREFIX}*.json"))
    assert files, "no committed untrained reference to check"
    refs = untrained.load_references([runs_dir])
    for path in files:
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert set(doc["clients"]) <= set(refs[untrained.reference_key(doc["config"])]), path.name
        assert path.stem.startswith(f"{untrained.FILE_PREFIX}{doc['scenario']}-s{doc['seed']}-"), path.name


def test_every_committed_run_finds_its_untrained_reference() -> None:
    """A run whose scenario, seed and backbone precision have a committed untrained file is matched to it, whatever
    version of the runner stored its config (16 or 16.0 for a whole-number setting)."""
    import json

    import tools.untrained as untrained

    runs_dir = Path(__file__).parents[1] / "docs" / "runs"
    have = set()
    for path in runs_dir.rglob(f"{untrained.FILE_PREFIX}*.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        have.add((doc["scenario"], str(doc["seed"]), doc["config"]["model"].get("compute_dtype")))
    rows = [r for r in collect(runs_dir) if r["status"] == "completed"]
    wanted = [r for r in rows if (r["scenario"], str(r["seed"]), r["_config"]["model"].get("compute_dtype")) in have]
    assert wanted
    assert [Path(r["run_dir"]).name for r in wanted if not r["_untrained"]] == []


def test_a_bf16_compute_run_gets_its_own_table_that_says_so(tmp_path: Path) -> None:
    """Runs with bf16 backbone matmuls are not pooled with fp32 ones, and their table's budget line names it."""
    from tests.test_results import CONFIG

    runs = tmp_path / "runs"
    make_run(runs / "a", "fedamole", 0, [[0.5, 0.5]])
    bf16 = {**CONFIG, "model": {**CONFIG["model"], "compute_dtype": "bfloat16"}}
    run = make_run(runs / "b", "fedamole", 0, [[0.6, 0.6]], config=bf16)
    run.rename(run.with_name(run.name + "-bfloat16"))  # as tools.experiment names it
    paths, _ = write_results(runs, tmp_path / "docs")
    md = paths["md"].read_text()
    assert md.count("## bigbench_tasks — budget `cpu_small`, protocol `default`") == 2
    assert md.count("## bigbench_tasks — budget `cpu_small`, protocol `default`, bfloat16 backbone matmuls") == 1
    assert md.count("bfloat16 matmuls)") == 1
