"""Fetch BIG-bench task files the way a user would: ``pip download`` the public sdist, extract what is needed.

PyPI no longer serves ``bigbench==1.0.0`` (in 2026-12 it lists only 0.0.1, which holds no tasks): where the
index lacks it, each missing ``task.json`` is read from google/BIG-bench on GitHub, the sdist's own source.

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
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from amole.data.errors import DataSourceError, UnknownTaskError
from amole.data.pip_runner import pip_command
from amole.util import atomic

BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
_TASKS_DIR = "benchmark_tasks"
GITHUB_TASK_URL = "https://raw.githubusercontent.com/google/BIG-bench/main/bigbench/benchmark_tasks/{task}/task.json"


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
        raise DataSourceError(f"'{' '.join(cmd)}' failed (exit {proc.returncode})")
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
            out[task] = atomic.write_bytes(cached_task_path(cache_dir, task), fobj.read())
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
            try:
                sdist = download_sdist(cache)
            except DataSourceError as err:
                paths.update(download_from_github(missing, cache, str(err)))
            else:
                paths.update(extract_tasks(sdist, missing, cache))
    return paths


def download_from_github(tasks: Iterable[str], cache_dir: Path, why: str) -> dict[str, Path]:
    """Each ``task.json`` from GitHub into the cache, for an index without the sdist; ``why`` says what failed."""
    _log(f"{why}; reading the task files from GitHub instead")
    out: dict[str, Path] = {}
    for task in tasks:
        url = GITHUB_TASK_URL.format(task=task)
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise UnknownTaskError(f"unknown BIG-bench task {task!r}: {url} does not exist") from err
            raise DataSourceError(f"BIG-bench task {task!r}: {url} answered {err.code}") from err
        except (urllib.error.URLError, OSError) as err:
            raise DataSourceError(
                f"BIG-bench task {task!r} is not in the cache ({cache_dir}) and could not be downloaded: {why}; "
                f"{url}: {err}. Pass scenario.local_dir=<folder of <task>.json or <task>/task.json files>, or use "
                "scenario=bigbench_demo (four tasks shipped in the package)"
            ) from err
        out[task] = atomic.write_bytes(cached_task_path(cache_dir, task), body)
    return out
