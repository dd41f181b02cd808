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
from collections.abc import Callable, Sequence
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


def reference_scores(dirs: Sequence[Path], pattern: str,
                     key: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, dict[str, Any]]]:
    """key -> client -> record, from every reference file (JSON: key, config, clients) matching ``pattern`` under
    ``dirs``. A file is filed under the key ``key`` gives its stored config today, so files keyed by an older rule
    still match; one without a loadable config under the key it was written with. Unreadable files are reported."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for base in dirs:
        for path in sorted(Path(base).rglob(pattern)) if Path(base).is_dir() else []:
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(doc.get("key"), str) or not isinstance(doc.get("clients"), dict):
                    raise KeyError("key or clients")
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                print(f"skipping {path}: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            try:
                filed = key(doc["config"])
            except Exception:  # noqa: BLE001 - no loadable config: the key the file was written with
                filed = doc["key"]
            found.setdefault(filed, {}).update(doc["clients"])
    return found
