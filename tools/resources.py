"""Peak memory and CPU time of one simulation call, and the machine it ran on, for ``experiment.json``.

Peak memory is sampled with psutil over this process and all its descendants, which are the Ray head (GCS,
raylet) and the client workers: ``peak_client_mb`` is the largest RSS of one Ray worker process (one simulated
client's model and training) and ``peak_server_mb`` this process's RSS, both read every second (cheap);
``peak_total_mb`` is the largest sum of their PSS (proportional set size: shared pages counted once), read every
5 s, since reading PSS walks each process's page tables (~0.2 CPU s for a simulation's ~10 processes: every 0.5 s
that took a fifth of a core from the clients it measured). Where ``nvidia-smi`` exists, ``peak_gpu_mb``
is the largest memory used on the GPUs as it reports it (every process on them, sampled every 2 s).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import psutil


class MemorySampler:
    """Peak memory of this process and all its descendants (Ray head and client workers), sampled in a thread."""

    def __init__(self, interval: float = 1.0, pss_every: int = 5) -> None:
        self.interval = interval
        self.pss_every = pss_every
        self.peak = {"peak_total_mb": 0.0, "peak_client_mb": 0.0, "peak_server_mb": 0.0}
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds at its last sample (processes that end keep theirs)
        ct = psutil.Process().cpu_times()
        self._cpu_before = ct.user + ct.system  # this process's CPU time before the simulation
        self.gpu = shutil.which("nvidia-smi")
        self.gpu_baseline_mb = self._gpu_used() if self.gpu else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            self.sample(gpu=n % 2 == 0, pss=n % self.pss_every == 0)
            n += 1

    def sample(self, gpu: bool = True, pss: bool = True) -> None:
        me = psutil.Process()
        try:
            procs = [me, *me.children(recursive=True)]
        except psutil.Error:
            procs = [me]
        total, workers, others = 0, [], []
        for p in procs:
            try:
                info = p.memory_full_info() if pss else p.memory_info()
                total += getattr(info, "pss", info.rss)
                ct = p.cpu_times()
                self._cpu[p.pid] = ct.user + ct.system
                if p.pid == me.pid:
                    self._max("peak_server_mb", info.rss / 1e6)
                elif (p.name() or "").startswith("ray::") or " ".join(p.cmdline()[:1]).startswith("ray::"):
                    workers.append(info.rss)
                else:
                    others.append(info.rss)
            except psutil.Error:  # gone, zombie or not ours to read
                continue
        if pss:
            self._max("peak_total_mb", total / 1e6)
        self._max("peak_client_mb", max(workers or others or [0]) / 1e6)
        if gpu and self.gpu:
            used = self._gpu_used()
            if used is not None:
                self._max("peak_gpu_mb", used)

    def _max(self, key: str, value: float) -> None:
        self.peak[key] = max(self.peak.get(key, 0.0), round(value, 1))

    def _gpu_used(self) -> float | None:
        try:
            out = subprocess.run([self.gpu or "nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            return float(sum(float(x) for x in out.split()))  # MiB as nvidia-smi reports, summed over GPUs
        except (OSError, subprocess.SubprocessError, ValueError):
            return None

    def result(self) -> dict[str, float]:
        out = dict(self.peak)
        # CPU seconds of the runner (this call only) and of every descendant seen: a load-independent cost.
        out["cpu_s"] = round(sum(self._cpu.values()) - self._cpu_before, 1)
        if self.gpu_baseline_mb is not None:
            out["gpu_baseline_mb"] = self.gpu_baseline_mb
        return out


def cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo), since CPU timings differ several-fold between hosts of one
    core count; None where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def host_info() -> dict[str, Any]:
    """The machine a run ran on, so a table of timings and peaks says what hardware they mean."""
    info: dict[str, Any] = {"host": platform.node(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "gpus": []}
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout
            info["gpus"] = [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return info
