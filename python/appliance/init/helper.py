"""The init's helper processes (the crash reporter, the update checker): each a Python
process of its own, so that what a network sends is read there, never in PID 1. The init
starts one and puts its lines (bounded) on the console from a thread."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.init.root import Root
from appliance.init.supervise import SpawnError, spawn

if TYPE_CHECKING:
    import threading

PYTHON = "/usr/bin/python3"
PYTHONPATH = "/usr/lib/appliance/python"
MAX_LINE = 300  # characters of one helper's line put on the console
MAX_LINES = 2000  # lines said in one boot (a helper that loops cannot flood the console)


class Helper:
    def __init__(self, name: str, say: Callable[[str], None], root: Root) -> None:
        self.name = name  # what it is called on the console: "crash reports"
        self.say = say
        self.root = root
        self.pid = 0
        self.done: threading.Event | None = None  # set once its output ended: it exited

    def start(self, args: list[str], env: dict[str, str] | None = None, python_path: tuple[str, ...] = ()) -> bool:
        """``python3 -SB -m args...`` with the appliance package (and ``python_path``) on its path."""
        import threading  # only boots that start a helper pay for it
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        path = ":".join(self.root(p) for p in (PYTHONPATH, *python_path))
        environment = {"PATH": "/usr/bin:/usr/sbin", "LANG": "C.UTF-8", "TZ": "UTC", "PYTHONPATH": path,
                       **(env or {})}
        try:
            self.pid = spawn([self.root(PYTHON), "-SB", "-m", *args], environment, write_fd)
        except (SpawnError, OSError) as e:
            os.close(read_fd)
            self.say(f"{self.name}: could not start {args[0]}: {e}")
            return False
        finally:
            os.close(write_fd)
        self.done = threading.Event()
        threading.Thread(target=self._relay, args=(read_fd, self.done), name=self.name, daemon=True).start()
        return True

    def running(self) -> bool:
        return bool(self.pid) and self.done is not None and not self.done.is_set()

    def _relay(self, fd: int, done: threading.Event) -> None:
        """The helper's lines onto the console, each cut at MAX_LINE, at most MAX_LINES."""
        pending, said = b"", 0
        try:
            while chunk := os.read(fd, 4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE * 4:
                    lines.append(pending)
                    pending = b""
                for line in lines:
                    said += 1
                    if said <= MAX_LINES:
                        self.say(line[:MAX_LINE].decode("utf-8", "replace"))
                    elif said == MAX_LINES + 1:
                        self.say(f"{self.name}: says more than the console takes; its further lines are dropped")
        except OSError:
            pass
        finally:
            os.close(fd)
            done.set()
