"""The one thin layer that makes system calls Python's os module lacks.

Only this module imports ctypes. Everything else receives a ``Kernel`` (or a fake
with the same methods), so the init's logic runs under plain pytest without root.
Each call raises ``OSError(errno, strerror, path)`` on failure, like os functions.
"""

from __future__ import annotations

import ctypes
import os

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_RELATIME = 1 << 21
# <linux/reboot.h>
RB_AUTOBOOT = 0x01234567
RB_POWER_OFF = 0x4321FEDC
RB_DISABLE_CAD = 0
# <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
# <linux/module.h>
MODULE_INIT_COMPRESSED_FILE = 4
# <sys/syscall.h>, x86-64
SYS_finit_module = 313


class Kernel:
    """System calls through libc, each with its argument types declared once."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._mount = libc.mount
        self._mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        self._umount2 = libc.umount2
        self._umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._reboot = libc.reboot
        self._reboot.argtypes = [ctypes.c_int]
        self._prctl = libc.prctl
        self._prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long

    @staticmethod
    def _check(result: int, what: str, path: str | None = None) -> None:
        if result == -1:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}", path)

    def mount(self, source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        r = self._mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None)
        self._check(r, f"mount {fstype}", target)

    def umount(self, target: str, flags: int = 0) -> None:
        self._check(self._umount2(target.encode(), flags), "umount", target)

    def reboot(self, cmd: int) -> None:
        self._check(self._reboot(cmd), "reboot")

    def set_child_subreaper(self) -> None:
        self._check(self._prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")

    def finit_module(self, path: str, params: str = "") -> None:
        """Load a kernel module from a file; compressed files are decompressed by the kernel."""
        flags = MODULE_INIT_COMPRESSED_FILE if path.endswith((".xz", ".zst", ".gz")) else 0
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            r = self._syscall(SYS_finit_module, ctypes.c_int(fd), ctypes.c_char_p(params.encode()),
                              ctypes.c_int(flags))
            self._check(int(r), "finit_module", path)
        finally:
            os.close(fd)
