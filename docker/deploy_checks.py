"""What `make deploy-test` checks and measures: the config before anything starts, how the run ended (by the
ServerApp's own record), each site's kept model, the ClientApps' start-up overhead, the server's seconds a round,
each site's memory, whether two runs ended with the same experts, and the task list for more sites than the
synthetic scenario names. Imported by docker/deploy_test.py and docker/compose_test.py (docker/ is not a package)."""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

from deploy_console import detail, say

RAISED = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception)): (.+)$")  # a traceback's last line
RUN_ENDED = re.compile(r"run \S+ (completed|failed) after \d+ of \d+ rounds(?:: (.*))?")  # the strategy's last word


def preflight(overrides: list[str]) -> str | None:
    """The ServerApp's own checks of a config (compose, keys a strategy fixes, tasks per client, expert slots),
    run here before any process starts: a config the server would refuse fails in seconds, not after the
    federation is up (or, for compose-test, after the images are built). The error's one line, or None."""
    from amole.compose import compose
    from server_app.outcome import error_line
    from server_app.strategy import FedAMoLE

    try:
        with tempfile.TemporaryDirectory(prefix="amole-preflight-") as runs:
            FedAMoLE(compose(overrides), runs_dir=runs)
    except Exception as err:  # noqa: BLE001 - whatever the server would refuse, the answer is its one line
        return error_line(err)
    return None


def judge(run_dir: Path | None, flower_status: str) -> tuple[str, str | None]:
    """completed | failed, and the error's one line: Flower reports a run whose ServerApp raised as completed,
    so the run's own outcome.json decides, and both must say completed."""
    from server_app.outcome import read_outcome

    if run_dir is None:
        return "failed", "no run folder: the ServerApp never started the run"
    outcome = read_outcome(run_dir)
    if outcome["status"] != "completed":
        return "failed", outcome["error"]
    if not flower_status.endswith(":completed"):
        return "failed", f"Flower's run status is {flower_status}"
    return "completed", None


def judge_log(lines: list[str], flower_status: str) -> tuple[str, str | None]:
    """As ``judge`` where the run folder is out of reach (inside the ServerApp's container, compose-test): the
    line the strategy logs as it writes outcome.json (``run <name> completed|failed after i of n rounds[: error]``)."""
    ended = [m for line in lines if (m := RUN_ENDED.search(line))]
    if not ended:  # it failed before its run began (a config it refuses): the traceback's last line, or Flower's
        raised = [m for line in lines if (m := RAISED.match(line.strip()))]
        if raised:
            return "failed", f"{raised[-1].group(1)}: {raised[-1].group(2)}"
        details = flower_status.split(" ", 1)[1].strip() if " " in flower_status.strip() else ""
        return "failed", details or "the ServerApp logged no end of the run (it never started it, or was killed)"
    if ended[-1].group(1) != "completed":
        return "failed", ended[-1].group(2) or ended[-1].group(0)
    if not flower_status.split()[0].endswith(":completed"):
        return "failed", f"Flower's run status is {flower_status}"
    return "completed", None


def compare_experts(a: Path, b: Path) -> tuple[bool, float]:
    """Whether two checkpoints (files, or the run folders holding them) hold the same expert bank (names, shapes,
    values): bit-equal, and the largest absolute difference of any tensor (inf when names or shapes differ)."""
    from safetensors.torch import load_file

    x, y = (load_file(str(p if p.suffix == ".safetensors" else p / "checkpoint.safetensors")) for p in (a, b))
    x, y = ({k: v for k, v in t.items() if k.startswith("bank/")} for t in (x, y))
    if x.keys() != y.keys() or any(x[k].shape != y[k].shape for k in x):
        return False, math.inf
    diff = max(((x[k].double() - y[k].double()).abs().max().item() for k in x if x[k].numel()), default=0.0)
    return all(bool((x[k] == y[k]).all()) for k in x), diff


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


def round_seconds(run_dir: Path) -> float:
    """The server's mean seconds per round, from the run's own metrics.json."""
    path = run_dir / "metrics.json"
    rounds = [r.get("seconds") for r in json.loads(path.read_text()).get("rounds", [])] if path.is_file() else []
    return statistics.fmean(x for x in rounds if isinstance(x, int | float)) if rounds else math.nan


def run_id_of(run_dir: Path) -> str | None:
    """The run's own id (its sites keep their models under it), from its metrics.json."""
    path = run_dir / "metrics.json"
    return json.loads(path.read_text())["run"]["id"] if path.is_file() else None


def check_site_models(tmp: Path, nodes: int, run_id: str | None = None) -> int:
    """Each site's folder must hold its personalized model of the run ``run_id`` (default: any run) after the
    run (only there: the server has none): load it as a site would (amole.load_personalized), generate a few
    tokens."""
    from amole.site.personal import load_personalized

    ok = 0
    for site in (tmp / f"site-{n}" for n in range(1, nodes + 1)):  # the registered sites, not the intruder
        latest = sorted(site.glob(f"sites/*/model/{run_id or '*'}/latest"))
        if not latest:
            say(f"FAIL: {site.name} holds no personalized model")
            continue
        model, tokenizer = load_personalized(latest[-1], device="cpu")
        ids = tokenizer("Q: hello\nA:", return_tensors="pt").input_ids
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
        detail(f"{site.name}: model {latest[-1].relative_to(tmp)} loads and generates {out.shape[1] - ids.shape[1]} "
            "tokens")
        ok += 1
    say(f"sites holding a model that loads and generates: {ok} of {nodes}")
    return ok


def overhead(run_dir: Path, tmp: Path) -> float:
    """The median over clients and rounds after the first of each reply's ``overhead_s`` (seconds from its
    ClientApp's start to the round's first step), from the run's metrics.json; logged with its part before the
    ClientApp's handler ran (``startup_s``: Flower's own process start) and how often each site's worker started."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return math.nan
    rounds = {r["round"]: list(r["clients"].values()) for r in json.loads(path.read_text())["rounds"]}
    for key in ("overhead_s", "startup_s", "startup_cpu_s"):
        detail(f"{key} per round and client: " + "; ".join(
            f"{t}: {', '.join(f'{c[key]:.2f}' for c in cs if key in c)}" for t, cs in sorted(rounds.items())))
    later = [c for t, cs in rounds.items() if t > 1 for c in cs if "overhead_s" in c]
    if later:
        total = statistics.median(c["overhead_s"] for c in later)
        before = statistics.median(c.get("startup_s", 0.0) for c in later)
        cpu = statistics.median(c.get("startup_cpu_s", 0.0) for c in later)
        after = statistics.median(c["overhead_s"] - c.get("startup_s", 0.0) for c in later)
        detail(f"rounds after the first, median: {total:.2f} s from the ClientApp's start to the first step, "
            f"{before:.2f} s of it before its handler ran (Flower's process start; {cpu:.2f} s of CPU), "
            f"{after:.2f} s from there on")
    detail(f"resident workers started per site: {worker_starts(tmp)}")
    return statistics.median(c["overhead_s"] for c in later) if later else math.nan


def worker_starts(tmp: Path) -> dict[str, int]:
    """How often each site's resident workers started, over all runs so far (a worker logs "listening on" as it
    starts; a site keeps one worker per run, so a site that kept its worker through a run adds one start)."""
    starts: dict[str, int] = {}
    for path in tmp.glob("site-*/sites/*/worker/*.log"):
        site = path.parents[3].name
        starts[site] = starts.get(site, 0) + path.read_text(errors="replace").count("listening on")
    return dict(sorted(starts.items()))
