"""The machine a Python program expects, set up before the core starts: the host name
(from /etc/hostname, written at build time from HOSTNAME=) and the loopback interface,
up with 127.0.0.1 and ::1 (the kernel gives lo its addresses when it comes up).

Both are a system call each; what fails is said and the boot goes on.
"""

from __future__ import annotations

import fcntl
import re
import socket
import struct
from collections.abc import Callable

HOSTNAME_FILE = "/etc/hostname"
DEFAULT_HOSTNAME = "appliance"
# RFC 1123 labels; Linux keeps at most 64 bytes.
HOSTNAME_RE = re.compile(r"(?=.{1,64}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags in the union


def valid_hostname(name: str) -> bool:
    return HOSTNAME_RE.fullmatch(name) is not None


def read_hostname(path: str = HOSTNAME_FILE) -> tuple[str, str]:
    """(the name to set, a problem to say or ""): a missing or bad file gives the default."""
    try:
        with open(path, "rb") as f:
            name = f.read(256).decode("ascii", "replace").strip()
    except OSError as e:
        return DEFAULT_HOSTNAME, f"cannot read {path}: {e.strerror}: using {DEFAULT_HOSTNAME}"
    if not valid_hostname(name):
        return DEFAULT_HOSTNAME, f"{path} holds no valid host name ({name[:64]!r}): using {DEFAULT_HOSTNAME}"
    return name, ""


def interface_up(name: str) -> bool:
    """Bring an interface up; whether it was down before. OSError when it cannot be."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack(IFREQ, name.encode(), 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        if flags & IFF_UP:
            return False
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack(IFREQ, name.encode(), flags | IFF_UP))
        return True


def set_up(say: Callable[[str], None], hostname_file: str = HOSTNAME_FILE) -> None:
    """Set the host name and bring up lo, and say so."""
    name, problem = read_hostname(hostname_file)
    if problem:
        say(problem)
    try:
        socket.sethostname(name)
        host = f"host name {name}"
    except OSError as e:
        host = f"could not set the host name {name}: {e.strerror}"
    try:
        interface_up("lo")
        lo = "loopback up"
    except OSError as e:
        lo = f"could not bring up the loopback interface: {e.strerror}"
    say(f"{host}; {lo}")
