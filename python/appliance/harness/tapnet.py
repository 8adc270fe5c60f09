"""A network of the test's own, for what QEMU's restricted user network cannot carry
(its forwarding is TCP only): a network namespace with a tap device for QEMU, and real
servers on it: Debian's dnsmasq giving DHCP leases that name a time server (option 42),
and chronyd as that server. Nothing in it reaches this machine's own network.

Needs root (CI runs as root) and ``make deps`` (which unpacks dnsmasq and chronyd).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import TracebackType

from appliance.harness import bugsink, daemon, timeserver

GATEWAY = "10.9.0.1"  # the namespace's end of the tap: DHCP and the time server
TAP = "tap0"


def dnsmasq_root() -> Path:
    return bugsink.venv() / "dnsmasq" / "root"


def available() -> str:
    """Why this cannot run here, or ""."""
    if os.geteuid() != 0:
        return "a network namespace with a tap device needs root (CI runs the tests as root)"
    if not (dnsmasq_root() / "usr/sbin/dnsmasq").exists():
        return f"dnsmasq is not unpacked in {dnsmasq_root().parent} (make deps does it)"
    return timeserver.available()


class TapNetwork:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"appliance-{os.getpid()}-{time.monotonic_ns() % 100000}"
        self.wrapper = ("ip", "netns", "exec", self.name)
        self.dhcp: subprocess.Popen[bytes] | None = None
        self.time = timeserver.TimeServer(folder / "chrony", GATEWAY, 123, self.wrapper, allow=f"{GATEWAY}/24")
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def nic(self) -> tuple[str, ...]:
        """QEMU's arguments for a NIC on the tap (QEMU runs in the namespace: ``wrapper``)."""
        return ("-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
                "-device", "virtio-net-pci,netdev=net0,romfile=")

    def _ip(self, *args: str) -> None:
        subprocess.run([*self.wrapper, "ip", *args], check=True, capture_output=True)

    def __enter__(self) -> TapNetwork:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            self._ip("link", "set", "lo", "up")
            self._ip("tuntap", "add", "dev", TAP, "mode", "tap")
            self._ip("addr", "add", f"{GATEWAY}/24", "dev", TAP)
            self._ip("link", "set", TAP, "up")
            libs = dnsmasq_root() / "usr/lib/x86_64-linux-gnu"
            self.dhcp = daemon.spawn(
                [*self.wrapper, "env", f"LD_LIBRARY_PATH={libs}", str(dnsmasq_root() / "usr/sbin/dnsmasq"),
                 "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--port=0",
                 f"--interface={TAP}", "--bind-interfaces", "--user=root", "--group=root",
                 "--dhcp-range=10.9.0.10,10.9.0.20,255.255.255.0,1h", f"--dhcp-option=42,{GATEWAY}",
                 f"--dhcp-leasefile={self.folder / 'leases'}", f"--pid-file={self.folder / 'dnsmasq.pid'}"],
                self.folder / "dnsmasq.log")
            self.time.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.time.stop()
        daemon.stop(self.dhcp)
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)
