"""The early mounts as a table: each step says what it mounts and whether boot needs it."""

from __future__ import annotations

import os
from typing import NamedTuple, Protocol

from appliance import efivars
from appliance.init.kernel import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RELATIME


class Mounter(Protocol):
    def mount(self, source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None: ...


class Mount(NamedTuple):
    source: str
    target: str
    fstype: str
    flags: int
    data: str = ""
    required: bool = True  # a required step that fails ends in the reboot path

    def describe(self) -> str:
        return f"{self.fstype} on {self.target}"


class Symlink(NamedTuple):
    target: str
    path: str
    required: bool = False

    def describe(self) -> str:
        return f"{self.path} -> {self.target}"


_SAFE = MS_NOSUID | MS_NODEV | MS_NOEXEC

EARLY: tuple[Mount | Symlink, ...] = (
    Mount("proc", "/proc", "proc", _SAFE | MS_RELATIME),
    Mount("sysfs", "/sys", "sysfs", _SAFE | MS_RELATIME),
    Mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_RELATIME, "mode=0755"),
    Mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC | MS_RELATIME, "gid=5,mode=0620,ptmxmode=0666"),
    Mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_RELATIME, "mode=1777", required=False),
    Mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_RELATIME, "mode=0755"),
    Mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_RELATIME, "mode=1777"),
    Symlink("/proc/self/fd", "/dev/fd"),
    Symlink("/proc/self/fd/0", "/dev/stdin"),
    Symlink("/proc/self/fd/1", "/dev/stdout"),
    Symlink("/proc/self/fd/2", "/dev/stderr"),
    Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", _SAFE | MS_RELATIME, "nsdelegate", required=False),
    # The kernel's lockdown state (Secure Boot locks Debian's kernel down) is read here.
    Mount("securityfs", "/sys/kernel/security", "securityfs", _SAFE | MS_RELATIME, required=False),
)

# Mounted after the kernel modules are loaded (efivarfs may be a module).
FIRMWARE: tuple[Mount, ...] = (
    Mount("efivarfs", efivars.EFIVARS, "efivarfs", _SAFE | MS_RELATIME, required=False),
    Mount("pstore", "/sys/fs/pstore", "pstore", _SAFE | MS_RELATIME, required=False),
)


class StepResult(NamedTuple):
    step: Mount | Symlink
    error: OSError | None

    @property
    def ok(self) -> bool:
        return self.error is None

    def message(self) -> str:
        what = f"mount {self.step.describe()}" if isinstance(self.step, Mount) else f"link {self.step.describe()}"
        if self.ok:
            return f"{what}: ok"
        kind = "required" if self.step.required else "continuing: best-effort"
        return f"could not {what}: {self.error} ({kind})"


def apply(steps: tuple[Mount | Symlink, ...], kernel: Mounter, root: str = "/") -> list[StepResult]:
    """Carry out each step under ``root``; never raises, each step reports its own outcome."""
    results = []
    for step in steps:
        try:
            if isinstance(step, Mount):
                target = os.path.join(root, step.target.lstrip("/"))
                os.makedirs(target, exist_ok=True)
                kernel.mount(step.source, target, step.fstype, step.flags, step.data)
            else:
                path = os.path.join(root, step.path.lstrip("/"))
                if not os.path.lexists(path):
                    os.symlink(step.target, path)
            results.append(StepResult(step, None))
        except OSError as e:
            results.append(StepResult(step, e))
    return results
