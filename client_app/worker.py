"""A site's resident worker: keeps the loaded, injected model and the client's splits across the rounds of a
run, so a deployed ClientApp (a fresh process per message) does not import torch and reload the model every
round. Its ClientApp starts it on first use (client_app/worker_link.py); a site runs nothing extra.

    python -m client_app.worker --socket <path> --authkey-file <path> [--pid-file <path>] --idle-s <seconds>

It serves one round at a time on a Unix socket (0600, in the site's 0700 worker folder; every connection
answers an HMAC challenge with the authkey). Each round runs exactly as in the ClientApp itself
(client_app.runtime.run_request: adapters imported, seeds set, optimizer rebuilt per round), so nothing but
the model's frozen base and the splits carries from one round to the next. It exits after the run's last round
(the last train, or the last evaluate where the strategy scores the aggregate), after ``--idle-s`` without a
request, and on SIGTERM; the socket is removed on the way out. If it dies, the next ClientApp starts another.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from amole.util.atomic import write_text
from client_app.messages import EVALUATE, PROBE, Request

log = logging.getLogger("amole.worker")


class _Idle(Exception):
    """No request came within the idle timeout."""


def _on_alarm(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
    raise _Idle


def _on_term(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
    raise SystemExit(0)


def last_request(kind: str, request: Request) -> bool:
    """Whether the run has nothing more for this client after ``request``."""
    from amole.strategies.registry import method_named

    fed = request.settings.federation
    if request.server_round < fed.num_rounds or kind == PROBE:  # a probe comes before its round's training
        return False
    return kind == EVALUATE or not method_named(fed.strategy).server.scores_aggregate


def answer(message: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Run one round request; the answer (result, or the error with its traceback) and whether it was the last."""
    from client_app.runtime import run_request  # torch and the model: on the first request, not at start

    kind, request = message["kind"], message["request"]
    try:
        result = run_request(kind, request, message["node_config"], message["clock"])
        reply: dict[str, Any] = {"result": result}
    except Exception as exc:  # the ClientApp reports it; the worker stays for the next round
        log.exception("round %s (%s) failed", request.server_round, kind)
        reply = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    try:
        last = last_request(kind, request)
    except ValueError:
        last = False
    return reply, last


def _serve_one(conn: Connection) -> bool:
    with conn:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return False
        except Exception as exc:  # a message this worker cannot read (e.g. another app version): say so
            log.exception("unreadable request")
            conn.send({"error": f"the worker could not read the request: {type(exc).__name__}: {exc}"})
            return False
        t0 = time.perf_counter()
        reply, last = answer(message)
        try:
            conn.send(reply)
        except OSError as err:  # the ClientApp is gone (its SuperNode stopped): the round is lost, not the worker
            log.warning("the ClientApp left before the answer (%s)", err)
        log.info("round %s (%s) answered in %.1f s", message["request"].server_round, message["kind"],
                 time.perf_counter() - t0)
        return last


def serve(listener: Listener, idle_s: float) -> str:
    """Answer requests one at a time until the run's last one, or until none comes for ``idle_s``."""
    signal.signal(signal.SIGALRM, _on_alarm)
    while True:
        try:
            signal.setitimer(signal.ITIMER_REAL, idle_s)
            conn = listener.accept()
            signal.setitimer(signal.ITIMER_REAL, 0)
        except _Idle:
            return f"idle for {idle_s:g} s"
        except (AuthenticationError, EOFError, OSError) as err:  # a caller without the key, or one that left
            signal.setitimer(signal.ITIMER_REAL, 0)
            log.warning("refused a connection: %s: %s", type(err).__name__, err)
            continue
        if _serve_one(conn):
            return "the run's last round is done"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", required=True, help="the Unix socket to listen on")
    p.add_argument("--authkey-file", required=True, help="the 0600 file holding the connection key")
    p.add_argument("--pid-file", default=None, help="write this process's id here while it runs")
    p.add_argument("--idle-s", type=float, required=True, help="exit after this many seconds without a request")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _on_term)
    socket = Path(args.socket)
    socket.unlink(missing_ok=True)  # a dead worker's: the ClientApp that started this one holds the start lock
    umask = os.umask(0o077)  # the socket is created owner-only, not only chmod-ed so after
    try:
        listener = Listener(str(socket), family="AF_UNIX", authkey=Path(args.authkey_file).read_bytes())
    finally:
        os.umask(umask)
    why = "stopped"
    pid_file = None if args.pid_file is None else Path(args.pid_file)
    try:
        os.chmod(socket, 0o600)
        if pid_file is not None:
            write_text(pid_file, f"{os.getpid()}\n")
        log.info("listening on %s (exits after %g s idle)", socket, args.idle_s)
        why = serve(listener, args.idle_s)
    finally:
        log.info("exiting: %s", why)
        listener.close()  # removes the socket
        if pid_file is not None and pid_file.is_file() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
