"""The launchers' console (`make deploy-test`, `make deploy-restart`, `make compose-test`): a person sees what is
being done, one line per round and the verdict; everything else (Flower's and the processes' logs, tracebacks,
warnings, the per-client figures) goes to one log file whose path is printed. `--verbose` shows it all.

Standard library only; docker/ is not a package, so the launchers import this as a top-level module.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

# What the ServerApp says that a person watching a run wants: a round ended (or who missed it), who joined or came
# back, a resume, and how the run ended. Its other lines (a round starting, timings) and Flower's go to the log.
SHOWN = re.compile(r"round \d+: (mean score|no reply|client \S+ joined|left out|rejected)|became unavailable|"
                   r"run \S+ (completed|failed) after|resuming \S+ after round")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Console:
    """Says a line on the terminal and in the log, or writes a detail to the log only (both with --verbose)."""

    def __init__(self, name: str, log_path: Path, verbose: bool = False) -> None:
        self.name, self.verbose, self.log_path = name, verbose, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.file: TextIO = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by close()
        self.shown = 0  # lines printed on the terminal
        self.out = sys.stdout  # the terminal, also while quiet() sends Python's own output to the log
        self.muted = False  # streamed round lines to the log only (a reference run the console summarizes)

    def _stamp(self, msg: str) -> str:
        return f"[{self.name} {time.strftime('%H:%M:%S')}] {msg}"

    def say(self, msg: str) -> None:
        """A line a person should read."""
        self.print(self._stamp(msg))

    def detail(self, msg: str) -> None:
        """A line for the log (and the terminal with --verbose)."""
        line = self._stamp(msg)
        self.file.write(line + "\n")
        if self.verbose:
            self._out(line)

    def print(self, line: str) -> None:
        """A bare line on the terminal and in the log (the final `deploy: ...` line)."""
        self.file.write(line + "\n")
        self._out(line)

    def stream(self, line: str) -> None:
        """One line of `flwr run --stream`: to the log; on the terminal when it is a round's end or the run's."""
        line = line.rstrip("\n")
        self.file.write(line + "\n")
        if self.verbose or (not self.muted and SHOWN.search(line)):
            self._out("  | " + ANSI.sub("", line))

    def _out(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()
        self.shown += 1

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Python's own stdout/stderr into the log while libraries load models (weight bars, advisory warnings)."""
        if self.verbose:
            yield
            return
        with contextlib.redirect_stdout(self.file), contextlib.redirect_stderr(self.file):
            yield

    def close(self) -> None:
        self.file.close()


_CURRENT: list[Console] = []


def use(console: Console) -> Console:
    """Make ``console`` the one ``say``/``detail`` write to (the deploy checks log through these)."""
    _CURRENT[:] = [console]
    return console


def say(msg: str) -> None:
    if _CURRENT:
        _CURRENT[0].say(msg)
    else:
        print(msg, flush=True)


def detail(msg: str) -> None:
    if _CURRENT:
        _CURRENT[0].detail(msg)


def stream(line: str) -> None:
    if _CURRENT:
        _CURRENT[0].stream(line)
    else:
        print("  | " + line.rstrip("\n"), flush=True)


def sink() -> TextIO | None:
    """Where a child process's output goes: the log file (flushed, so lines keep their order), or the terminal
    (None) with --verbose or without a console."""
    if not _CURRENT or _CURRENT[0].verbose:
        return None
    _CURRENT[0].file.flush()
    return _CURRENT[0].file
