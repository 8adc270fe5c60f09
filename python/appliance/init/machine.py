"""The machine a Python program expects, set up before the core starts: the host name
(from /etc/hostname, written at build time from HOSTNAME=) and the loopback interface,
up with 127.0.0.1 and ::1 (the kernel gives lo its addresses when it comes up).

Both are a system call each; what fails is said and the boot goes on.
"""

from __future__ import annotations

import _socket  # socket.py imports enum, which the init keeps off its start (tests/test_init_imports.py)
import fcntl
import struct
from collections.abc import Callable

from appliance.initconf import DEFAULT_HOSTNAME, HOSTNAME_FILE, valid_hostname

KERNEL_HOSTNAME = "/proc/sys/kernel/hostname"  # writing it sets the name (sethostname)

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags in the union


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
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        request = struct.pack(IFREQ, name.encode(), 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        if flags & IFF_UP:
            return False
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack(IFREQ, name.encode(), flags | IFF_UP))
        return True
    finally:
        s.close()


def set_hostname(name: str, path: str = KERNEL_HOSTNAME) -> None:
    with open(path, "w") as f:
        f.write(name)


def set_up(say: Callable[[str], None], hostname_file: str = HOSTNAME_FILE,
           kernel_hostname: str = KERNEL_HOSTNAME) -> None:
    """Set the host name and bring up lo, and say so."""
    name, problem = read_hostname(hostname_file)
    if problem:
        say(problem)
    try:
        set_hostname(name, kernel_hostname)
        host = f"host name {name}"
    except OSError as e:
        host = f"could not set the host name {name}: {e.strerror}"
    try:
        interface_up("lo")
        lo = "loopback up"
    except OSError as e:
        lo = f"could not bring up the loopback interface: {e.strerror}"
    say(f"{host}; {lo}")
