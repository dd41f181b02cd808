"""What `make deploy-test` checks and measures once its processes run: each site's kept model, the ClientApps'
start-up overhead, the server's seconds a round, each site's memory, and the task list for more sites than the
synthetic scenario names. Imported by docker/deploy_test.py (docker/ is not a package)."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any


def log(msg: str) -> None:
    print(f"[deploy-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def synthetic_tasks(nodes: int) -> list[str]:
    """The synthetic scenario gives client i its i-th task; for more sites than it lists, its tasks repeat."""
    from amole.compose import compose

    tasks = list(compose(["model=tiny", "scenario=synthetic"]).scenario.tasks)
    if nodes <= len(tasks):
        return []
    return [f"scenario.tasks=[{','.join(tasks[i % len(tasks)] for i in range(nodes))}]"]


def site_memory_mb(tmp: Path, sites: dict[int, Any]) -> dict[int, float]:
    """Each site's resident memory now: its SuperNode and everything it started, and its resident worker."""
    import psutil

    out = {}
    for site, m in sites.items():
        procs: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error, AttributeError):
            root = psutil.Process(m.proc.pid)
            procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        for pid_file in (tmp / f"site-{site}").glob("**/worker/*.pid"):
            with contextlib.suppress(psutil.Error, OSError, ValueError):
                procs.setdefault(int(pid_file.read_text()), psutil.Process(int(pid_file.read_text())))
        total = 0
        for proc in procs.values():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        out[site] = total / 1e6
    return out


def round_seconds(runs: Path) -> float:
    """The server's mean seconds per round, from the run's own metrics.json."""
    rounds = [r.get("seconds") for path in sorted(runs.glob("*/metrics.json"))
              for r in json.loads(path.read_text()).get("rounds", [])]
    return statistics.fmean(x for x in rounds if isinstance(x, int | float)) if rounds else math.nan


def check_site_models(tmp: Path, nodes: int) -> int:
    """Each site's folder must hold its personalized model after the run (only there: the server has none):
    load it as a site would (amole.load_personalized) and generate a few tokens."""
    from amole.site.personal import load_personalized

    ok = 0
    for site in (tmp / f"site-{n}" for n in range(1, nodes + 1)):  # the registered sites, not the intruder
        latest = sorted(site.glob("sites/*/model/*/latest"))
        if not latest:
            log(f"FAIL: {site.name} holds no personalized model")
            continue
        model, tokenizer = load_personalized(latest[-1], device="cpu")
        ids = tokenizer("Q: hello\nA:", return_tensors="pt").input_ids
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
        log(f"{site.name}: model {latest[-1].relative_to(tmp)} loads and generates {out.shape[1] - ids.shape[1]} "
            "tokens")
        ok += 1
    log(f"sites holding a model that loads and generates: {ok} of {nodes}")
    return ok


def overhead(runs: Path, tmp: Path) -> float:
    """The median over clients and rounds after the first of each reply's ``overhead_s`` (seconds from its
    ClientApp's start to the round's first step), from the run's metrics.json; logged with its part before the
    ClientApp's handler ran (``startup_s``: Flower's own process start) and how often each site's worker started."""
    found = sorted(runs.glob("*/metrics.json"))
    if not found:
        return math.nan
    rounds = {r["round"]: list(r["clients"].values()) for r in json.loads(found[-1].read_text())["rounds"]}
    for key in ("overhead_s", "startup_s", "startup_cpu_s"):
        log(f"{key} per round and client: " + "; ".join(
            f"{t}: {', '.join(f'{c[key]:.2f}' for c in cs if key in c)}" for t, cs in sorted(rounds.items())))
    later = [c for t, cs in rounds.items() if t > 1 for c in cs if "overhead_s" in c]
    if later:
        total = statistics.median(c["overhead_s"] for c in later)
        before = statistics.median(c.get("startup_s", 0.0) for c in later)
        cpu = statistics.median(c.get("startup_cpu_s", 0.0) for c in later)
        after = statistics.median(c["overhead_s"] - c.get("startup_s", 0.0) for c in later)
        log(f"rounds after the first, median: {total:.2f} s from the ClientApp's start to the first step, "
            f"{before:.2f} s of it before its handler ran (Flower's process start; {cpu:.2f} s of CPU), "
            f"{after:.2f} s from there on")
    starts = {p.parents[3].name: p.read_text().count("listening on") for p in tmp.glob("site-*/sites/*/worker/*.log")}
    log(f"resident workers started per site: {dict(sorted(starts.items()))}")
    return statistics.median(c["overhead_s"] for c in later) if later else math.nan
