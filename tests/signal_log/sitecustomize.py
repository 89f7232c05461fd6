"""Imported by every Python process of a server a test starts with ``PYTHONPATH=tests/signal_log`` and
``SIGNAL_LOG_OBEY=<pids>``: each SIGINT or SIGTERM is logged to stderr with the process that sent it, and
obeyed (the process exits) only when that is one of those pids, the process's parent or itself; any other
sender's signal is logged and ignored.

Why: three times in full suites the MLflow server of tests/test_trackers.py went away about a second after
it answered /health (twice logging uvicorn's "Shutting down", which only a SIGINT or SIGTERM starts), and no
code read or traced in passing runs sends it one. A Python signal handler is not told the sender;
``sigwaitinfo`` is. So the two signals are blocked in every thread (threads inherit the mask of the one
that starts them, and this runs before any other) and one thread waits for them.
"""

import os
import signal
import sys
import threading

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(f.read().decode(errors="replace").replace("\0", " ").split())[:300] or "?"
    except OSError:
        return "gone"


def _wait(obey: set[int]) -> None:
    while True:
        info = signal.sigwaitinfo(_SIGNALS)
        sender = info.si_pid
        obeyed = sender in obey or sender in (os.getppid(), os.getpid())
        print(f"signal-log: pid {os.getpid()} got {signal.Signals(info.si_signo).name} from pid {sender} "
              f"({_command(sender)}, code {info.si_code}): {'exiting' if obeyed else 'ignored'}",
              file=sys.stderr, flush=True)
        if obeyed:
            os._exit(128 + info.si_signo)


if os.environ.get("SIGNAL_LOG_OBEY"):
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    threading.Thread(target=_wait, args=({int(p) for p in os.environ["SIGNAL_LOG_OBEY"].split(",")},),
                     daemon=True, name="signal-log").start()
