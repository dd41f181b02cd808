"""tools.results_rsea: FedAMoLE against static and random, paired within (seed, precision) and pooled over the
tables that differ only in the backbone's matmul precision."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.test_results import CONFIG, make_run
from tools.results import collect, write_results
from tools.results_rsea import rsea_lines

SCORES = {  # (strategy, seed, precision) -> the two clients' last-round scores
    ("fedamole", 0, None): [0.6, 0.5], ("static", 0, None): [0.5, 0.5], ("random", 0, None): [0.4, 0.6],
    ("fedamole", 1, None): [0.7, 0.4], ("static", 1, None): [0.6, 0.5], ("random", 1, None): [0.5, 0.5],
    ("fedamole", 2, "bfloat16"): [0.5, 0.5], ("static", 2, "bfloat16"): [0.3, 0.5],
    ("random", 2, "bfloat16"): [0.5, 0.4],
}


def fake(root: Path) -> Path:
    for (strategy, seed, compute), last in SCORES.items():
        config = json.loads(json.dumps(CONFIG))
        config["model"]["compute_dtype"] = compute
        make_run(root / (compute or "fp32"), strategy, seed, [[0.1, 0.1], last], config=config)
    return root


def _stats(diffs: list[float]) -> tuple[float, float]:
    m = sum(diffs) / len(diffs)
    return m, math.sqrt(sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))


def test_pairs_stay_within_seed_and_precision_and_pool(tmp_path: Path) -> None:
    rows = collect(fake(tmp_path / "runs"))
    lines = "\n".join(rsea_lines(rows))
    # fedamole - static by (seed, client): seed 0 +0.1, 0.0; seed 1 +0.1, -0.1; seed 2 (bf16) +0.2, 0.0.
    m, se = _stats([0.1, 0.0, 0.1, -0.1, 0.2, 0.0])
    assert f"| static | all, pooled | {m:+.4f} ± {se:.4f} (6) |" in lines
    m, se = _stats([0.1, 0.0, 0.1, -0.1])
    assert f"| static | fp32 | {m:+.4f} ± {se:.4f} (4) |" in lines
    m, se = _stats([0.0, 0.1])
    assert f"| random | bfloat16 | {m:+.4f} ± {se:.4f} (2) |" in lines
    # Where: per client, mean over the three seeds (static: client 0 +0.1, +0.1, +0.2; client 1 0, -0.1, 0).
    assert "fedamole − static: 0 +0.133, 1 -0.033; fedamole − random: 0 +0.133, 1 -0.033." in lines
    assert "Seeds (with the backbone's matmul precision) where an ablation ran: 0 fp32, 1 fp32, 2 bfloat16." in lines
    # The two precisions stay two tables; the pooled section follows them.
    md = write_results(tmp_path / "runs", tmp_path / "docs")[0]["md"].read_text()
    assert md.count("\n## bigbench_tasks — budget `cpu_small`") == 2
    assert md.index("\n## Does re-assigning experts help?") > md.rindex("\n## bigbench_tasks — budget")
    assert "\n### bigbench_tasks — budget `cpu_small`" in md


def test_no_section_without_an_ablation(tmp_path: Path) -> None:
    make_run(tmp_path, "fedamole", 0, [[0.5, 0.5]])
    make_run(tmp_path, "local", 0, [[0.4, 0.5]])
    assert rsea_lines(collect(tmp_path)) == []


@pytest.mark.parametrize("strategy", ["static", "random"])
def test_one_pair_is_not_a_difference(tmp_path: Path, strategy: str) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["federation"]["num_clients"] = 1
    make_run(tmp_path, "fedamole", 0, [[0.5]], config=config)
    make_run(tmp_path, strategy, 0, [[0.4]], config=config)
    assert rsea_lines(collect(tmp_path)) == []
