"""A real syslog receiver for the tests: Debian's rsyslogd, unpacked by ``make deps``
beside Bugsink (``TRACKER_VENV``), taking RFC 5424 over TCP on a loopback port and
writing each message as ``<host> <app> <procid> <text>`` into a file."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from appliance.harness import bugsink, daemon

CONF = """module(load="imtcp")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="plain" type="string" string="%hostname% %app-name% %procid% %msg%\\n")
*.* action(type="omfile" file="{out}" template="plain")
"""


def root() -> Path:
    return bugsink.venv() / "rsyslog" / "root"


def available() -> str:
    daemon = root() / "usr/sbin/rsyslogd"
    return "" if daemon.exists() else f"rsyslogd is not unpacked in {root().parent} (make deps does it)"


class Syslogd:
    def __init__(self, folder: Path, port: int = 0) -> None:
        self.folder = folder
        self.port = port or bugsink.free_port()
        self.out = folder / "messages.log"
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "rsyslog.conf").write_text(CONF.format(port=self.port, out=self.out))

    def start(self) -> Syslogd:
        libs = root() / "usr/lib/x86_64-linux-gnu"
        log = self.folder / "rsyslogd.log"
        (self.folder / "rsyslogd.pid").unlink(missing_ok=True)
        self.process = daemon.spawn(
            [str(root() / "usr/sbin/rsyslogd"), "-n", "-f", str(self.folder / "rsyslog.conf"),
             "-i", str(self.folder / "rsyslogd.pid"), "-M", str(libs / "rsyslog")],
            log, {**os.environ, "LD_LIBRARY_PATH": str(libs)})
        if not bugsink.wait_listening(self.port, self.process, log, 20):
            raise RuntimeError("rsyslogd did not listen within 20 s")
        return self

    def stop(self) -> None:
        daemon.stop(self.process)
        self.process = None

    def messages(self) -> list[str]:
        return self.out.read_text(errors="replace").splitlines() if self.out.exists() else []

    def wait_for(self, text: str, seconds: float) -> list[str]:
        """The messages, once one holds ``text`` (or ``seconds`` have passed): what a sender
        said is on its way over TCP, in order, until the receiver writes it down."""
        deadline = time.monotonic() + seconds
        while True:
            got = self.messages()
            if any(text in line for line in got) or time.monotonic() > deadline:
                return got
            time.sleep(0.2)
