"""The init's helper processes (the crash reporter, the update checker): each a Python
process of its own, so that what a network sends is read there, never in PID 1. The init
starts one and puts its lines (bounded) on the console from a thread."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.esp.files import EspFiles
from appliance.init.root import Root
from appliance.init.supervise import SpawnError, spawn
from appliance.initconf import Config

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


class EspHelper:
    """A helper that the image's setting or a file on the ESP turns on, that needs a
    network and writes to the ESP: the crash reporter, the update checker."""

    name = ""  # on the console
    esp_file = ""  # the ESP's file that names (or turns off) what the image's setting names
    not_writable = ""  # what is said when the ESP is read-only
    python_path: tuple[str, ...] = ()

    def __init__(self, config: Config, say: Callable[[str], None], root: Root,
                 esp: Callable[[], EspFiles | None]) -> None:
        self.config = config
        self.say = say
        self.root = root
        self.esp = esp  # the writable ESP's files, or None
        self.helper = Helper(self.name, say, root)

    def configured(self) -> bool:
        """Whether the image's own setting turns it on."""
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def wanted(self) -> bool:
        """A network, and the image's setting or the ESP's file (which may also say off:
        the helper reads it)."""
        if self.config.network != "dhcp":
            return False
        if self.configured():
            return True
        files = self.esp()
        return files is not None and files.exists(self.esp_file)

    def start(self) -> None:
        if not self.wanted():
            return
        if self.esp() is None:
            self.say(f"{self.name}: {self.not_writable}")
            return
        self.helper.start(self.argv(), {"TMPDIR": self.root("/run/appliance")}, self.python_path)
