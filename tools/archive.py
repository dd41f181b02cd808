"""The evidence of finished runs, kept where git keeps it: ``<archive>/<run>/`` holds a complete run's
``metrics.json``, ``experiment.json`` and ``report.md`` (tens of kB; the run's checkpoint and models stay in
``runs/``).

A sweep of many CPU-hours outlives one machine: with ``experiment.archive_dir`` set, the experiment runner copies
every run it completes into the archive and skips a run the archive already holds complete with the same config,
so a fresh clone goes on with the runs that are missing instead of starting over. ``make results`` reads the
archive together with ``runs/`` (tools.results).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from amole.util.atomic import atomic_path
from server_app.run_report import METRICS_FILE, load_metrics
from tools.chunking import EXPERIMENT_FILE, config_mismatch

KEPT = (METRICS_FILE, EXPERIMENT_FILE, "report.md")


def archived_rounds(archive_dir: Path, name: str, wanted: dict[str, Any]) -> tuple[int, list[str]]:
    """(rounds the archive holds for run ``name``, config differences from ``wanted``); (0, []) when none."""
    run_dir = Path(archive_dir) / name
    if not (run_dir / METRICS_FILE).is_file():
        return 0, []
    try:
        metrics = load_metrics(run_dir)
        saved = metrics["run"]["config"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{run_dir / METRICS_FILE} is not a run's metrics file ({err}): remove it to rerun "
                         f"{name}") from err
    return len(metrics["rounds"]), config_mismatch(saved, wanted)


def archive_run(run_dir: Path, archive_dir: Path) -> Path:
    """Copy a finished run's small files into ``archive_dir/<run name>/`` (each file replaced atomically)."""
    run_dir = Path(run_dir)
    dest = Path(archive_dir) / run_dir.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (run_dir / name).is_file():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(run_dir / name, tmp)
    return dest
