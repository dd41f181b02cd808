"""The evidence of finished runs, kept where git keeps it: ``<archive>/<run>/`` holds a complete run's
``metrics.json``, ``experiment.json`` and ``report.md`` (tens of kB; the run's checkpoint and models stay in
``runs/``).

A sweep of many CPU-hours outlives one machine: with ``experiment.archive_dir`` set, the experiment runner copies
every run it completes into the archive and skips a run the archive already holds complete with the same config,
so a fresh clone goes on with the runs that are missing instead of starting over. ``make results`` reads the
archive together with ``runs/`` (tools.results), and the reference files kept beside the runs (the untrained
model's scores, tools.untrained; the no-model yardsticks, tools.yardstick).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator, Sequence
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


def reference_docs(dirs: Sequence[Path], pattern: str) -> Iterator[dict[str, Any]]:
    """Each reference file (JSON) matching ``pattern`` under ``dirs``; an unreadable one is reported and skipped."""
    for base in dirs:
        for path in sorted(Path(base).rglob(pattern)) if Path(base).is_dir() else []:
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(doc.get("key"), str) or not isinstance(doc.get("clients"), dict):
                    raise KeyError("key or clients")
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                print(f"skipping {path}: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            yield doc
