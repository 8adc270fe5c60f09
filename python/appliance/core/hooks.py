"""Installed in the core's own interpreter before the core's code runs.

Everything goes to stderr (fd 2), which the init tees to the console and the ESP:
- faulthandler: a Python traceback of every thread on SIGSEGV, SIGFPE, SIGABRT,
  SIGBUS and SIGILL, written by C code that needs no working interpreter;
- the main thread's uncaught exception, framed by a line that names it;
- an uncaught exception in any other thread is a crash of the core: its traceback is
  written, then the core exits with status 70 (a silently dead worker thread is the
  worst way for an appliance to fail);
- unraisable exceptions (in __del__, callbacks) are written and the core goes on.
"""

from __future__ import annotations

import faulthandler
import os
import runpy
import sys
import threading
import traceback
from types import TracebackType
from typing import Any

THREAD_CRASH_STATUS = 70  # EX_SOFTWARE


def _write(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - stderr itself may be what broke
        os.write(2, text.encode("utf-8", "replace"))


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    _write("uncaught exception in the main thread:\n" + "".join(traceback.format_exception(kind, value, tb)))


def _thread_excepthook(args: Any) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    _write(f"uncaught exception in thread {name!r}: the core exits with status {THREAD_CRASH_STATUS}\n"
           + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
    os._exit(THREAD_CRASH_STATUS)


def _unraisablehook(args: Any) -> None:
    msg = args.err_msg or "exception ignored in"
    _write(f"unraisable exception ({msg}: {args.object!r}):\n"
           + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))


def install() -> None:
    faulthandler.enable(file=sys.stderr, all_threads=True)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook


def run_core(argv: list[str]) -> None:
    """Run the core at ``argv[0]`` (a file, or a directory with __main__.py) as __main__."""
    if not argv:
        _write("launch-core: no core given\n")
        sys.exit(2)
    install()
    sys.argv = list(argv)
    # Our own path is not the core's business.
    sys.path[:] = [p for p in sys.path if not p.startswith("/usr/lib/appliance/python")]
    runpy.run_path(argv[0], run_name="__main__")
