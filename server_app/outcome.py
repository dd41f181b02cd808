"""How a run ended, in its own folder (``outcome.json``), written by the strategy itself.

Flower reports a run whose ServerApp raised as ``finished:completed`` and ``flwr run`` exits 0, so launchers
(``make demo``, ``make deploy-test``, ``make compose-test``, the experiment runner) judge a run by this file: a
run that recorded no outcome did not complete either. Standard library only, so any launcher can read it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

OUTCOME = "outcome.json"
COMPLETED, FAILED = "completed", "failed"


def error_line(err: BaseException) -> str:
    """An exception as the one line a person reads: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def write_outcome(run_dir: Path, status: str, rounds_done: int, rounds_planned: int,
                  error: BaseException | None = None) -> Path:
    """Record how the run ended (atomically: a reader sees the old file or the new one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": status, "rounds_done": rounds_done, "rounds_planned": rounds_planned,
              "error": error_line(error) if error is not None else None,
              "finished": datetime.now(UTC).isoformat(timespec="seconds")}
    tmp = run_dir / f".{OUTCOME}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    tmp.replace(run_dir / OUTCOME)
    return run_dir / OUTCOME


def read_outcome(run_dir: Path) -> dict[str, Any]:
    """The recorded outcome; a folder without one (or with an unreadable one) reads as failed, saying why."""
    path = Path(run_dir) / OUTCOME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("status") in (COMPLETED, FAILED):
            return record
        reason = f"{path} has no status"
    except FileNotFoundError:
        reason = f"the ServerApp recorded no outcome in {run_dir} (it never started the run, or was killed)"
    except (OSError, ValueError) as err:
        reason = f"{path} is unreadable ({err})"
    return {"status": FAILED, "rounds_done": None, "rounds_planned": None, "error": reason}
