"""Fetch BIG-bench task files the way a user would: ``pip download`` the public sdist, extract what is needed.

BIG-bench is not a pip-installable data set in practice (its install pulls TensorFlow etc.), but its sdist on
PyPI carries every ``task.json``; downloading it with ``--no-deps`` works through any configured index and
needs no Hugging Face hub (see :mod:`amole.data.pip_runner` for the pip version caveat). Only the requested
files are pulled out of the tarball, in one streaming pass; the sdist is kept for later tasks.
"""

from __future__ import annotations

import difflib
import fcntl
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

from amole.data.errors import UnknownTaskError
from amole.data.pip_runner import pip_command

BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
_TASKS_DIR = "benchmark_tasks"


def default_cache_dir() -> Path:
    """``$AMOLE_CACHE/bigbench`` if set, else ``~/.cache/amole/bigbench``."""
    root = os.environ.get("AMOLE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "amole") / "bigbench"


def cached_task_path(cache_dir: Path, task: str) -> Path:
    """Where one extracted task lives (``/`` of sub-tasks flattened so each task is one file)."""
    return cache_dir / f"{task.replace('/', '__')}.json"


def _log(msg: str) -> None:
    print(f"[amole.data] {msg}", file=sys.stderr, flush=True)


def download_sdist(cache_dir: Path) -> Path:
    """Return the BIG-bench sdist, running ``pip download`` (about 360 MB, once) if it is not cached."""
    sdist_dir = cache_dir / "sdist"
    found = sorted(sdist_dir.glob("bigbench-*.tar.gz"))
    if found:
        return found[-1]
    sdist_dir.mkdir(parents=True, exist_ok=True)
    pip = pip_command(cache_dir / "tools")
    _log(f"downloading the {BIGBENCH_REQUIREMENT} sdist (~360 MB, one time) into {sdist_dir} ...")
    cmd = [*pip, "download", "--no-deps", "--no-binary", ":all:", BIGBENCH_REQUIREMENT, "-d", str(sdist_dir)]
    proc = subprocess.run(cmd, check=False)
    found = sorted(sdist_dir.glob("bigbench-*.tar.gz"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"'{' '.join(cmd)}' failed (exit {proc.returncode}); check pip's index configuration, or pass a "
            "local folder of BIG-bench task files (<dir>/<task>.json or <dir>/<task>/task.json) as the source"
        )
    return found[-1]


def _task_of(member_name: str) -> str | None:
    """``.../bigbench/benchmark_tasks/<task>[/<sub>]/task.json`` -> ``<task>[/<sub>]``, else None."""
    parts = member_name.split("/")
    if parts[-1] != "task.json" or _TASKS_DIR not in parts:
        return None
    return "/".join(parts[parts.index(_TASKS_DIR) + 1 : -1]) or None


def extract_tasks(sdist: Path, tasks: Iterable[str], cache_dir: Path) -> dict[str, Path]:
    """Stream through the tarball once, writing each wanted ``task.json`` to the cache."""
    wanted = set(tasks)
    out: dict[str, Path] = {}
    available: set[str] = set()
    _log(f"extracting {sorted(wanted)} from {sdist.name} ...")
    with tarfile.open(sdist, mode="r|gz") as tf:
        for member in tf:
            task = _task_of(member.name)
            if task is None or not member.isfile():
                continue
            available.add(task)
            if task not in wanted:
                continue
            fobj = tf.extractfile(member)
            assert fobj is not None
            dest = cached_task_path(cache_dir, task)
            tmp = dest.with_suffix(".json.part")
            tmp.write_bytes(fobj.read())
            tmp.replace(dest)  # atomic: a crash never leaves a half-written task behind
            out[task] = dest
    missing = sorted(wanted - set(out))
    if missing:
        raise UnknownTaskError(unknown_task_message(missing, available, f"the {BIGBENCH_REQUIREMENT} sdist"))
    return out


def unknown_task_message(missing: list[str], available: Iterable[str], where: str) -> str:
    """Say which names are unknown, suggest close names and show a few that exist."""
    names = sorted(available)
    hints = {m: difflib.get_close_matches(m, names, n=3) for m in missing}
    hint = "; ".join(f"{m!r}: did you mean {h}?" for m, h in hints.items() if h)
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    msg = f"unknown task(s) {missing} in {where}. Available: {shown or 'none'}"
    return msg + (f". {hint}" if hint else "")


def fetch_tasks(tasks: Iterable[str], cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Paths of cached task files, downloading and extracting only the ones missing from the cache."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    paths = {t: cached_task_path(cache, t) for t in dict.fromkeys(tasks)}
    if all(p.is_file() for p in paths.values()):
        return paths
    # Simulated clients start together: one process downloads, the others wait and then find the files.
    with open(cache / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [t for t, p in paths.items() if not p.is_file()]
        if missing:
            paths.update(extract_tasks(download_sdist(cache), missing, cache))
    return paths
