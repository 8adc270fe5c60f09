"""A real time server for the tests: Debian's chronyd, unpacked by ``make deps`` beside
Bugsink (``TRACKER_VENV``), serving this machine's clock over NTP on a loopback port
(``local stratum 8``: it answers as a synchronised server without peers of its own).
It never touches this machine's clock (``-x``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from appliance.harness import bugsink, daemon

PYTHON_DIR = Path(__file__).resolve().parents[2]
CONF = """port {port}
bindaddress {address}
allow {allow}
local stratum 8
cmdport 0
pidfile {folder}/chronyd.pid
driftfile {folder}/drift
"""


def chronyd() -> Path:
    return bugsink.venv() / "chrony" / "root" / "usr" / "sbin" / "chronyd"


def available() -> str:
    """Why chronyd cannot run here, or ""."""
    return "" if chronyd().exists() else f"chronyd is not unpacked in {chronyd().parents[3]} (make deps does it)"


def free_udp_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


class TimeServer:
    """chronyd on ``address`` (a free port, or ``port``); ``wrapper`` runs it (and the
    readiness probe) elsewhere: in a network namespace."""

    def __init__(self, folder: Path, address: str = "127.0.0.1", port: int = 0,
                 wrapper: tuple[str, ...] = (), allow: str = "") -> None:
        self.folder = folder
        self.address = address
        self.port = port or free_udp_port(address)
        self.wrapper = wrapper
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "chrony.conf").write_text(CONF.format(port=self.port, address=address, folder=folder,
                                                              allow=allow or address))

    def start(self) -> TimeServer:
        from appliance.init import sntp
        log = self.folder / "chronyd.log"
        self.process = daemon.spawn([*self.wrapper, str(chronyd()), "-d", "-x", "-u", "root", "-f",
                                     str(self.folder / "chrony.conf")], log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            why = daemon.ended(self.process, log)
            if why:
                raise RuntimeError(why)
            if self.answers(sntp):
                return self
            time.sleep(0.2)
        raise RuntimeError("chronyd did not answer within 20 s")

    def answers(self, sntp: Any) -> bool:
        if not self.wrapper:
            try:
                sntp.query(self.address, self.port, timeout=0.5)
                return True
            except (OSError, sntp.SntpError):
                return False
        probe = ("import sys; sys.path.insert(0, sys.argv[1]); from appliance.init import sntp; "
                 "sntp.query(sys.argv[2], int(sys.argv[3]), timeout=0.5)")
        return subprocess.run([*self.wrapper, sys.executable, "-S", "-c", probe, str(PYTHON_DIR), self.address,
                               str(self.port)], capture_output=True, check=False).returncode == 0

    def stop(self) -> None:
        daemon.stop(self.process)
        self.process = None

    @property
    def server(self) -> str:
        return f"{self.address}:{self.port}"
