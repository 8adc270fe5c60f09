"""Whether this boot runs under UEFI Secure Boot, and the kernel's lockdown that follows.

The firmware says it in the global variable SecureBoot (one byte, 1 when enforced);
Debian's kernel, booted so, locks itself down ("integrity": only signed modules, no
/dev/mem, no kexec of unsigned kernels) and says which in securityfs. The init says
both at every boot, and the boot's state file on the ESP keeps them.
"""

from __future__ import annotations

from typing import NamedTuple

from appliance import efivars

LOCKDOWN = "/sys/kernel/security/lockdown"


class State(NamedTuple):
    enabled: bool | None  # None: the firmware does not say (no EFI variables, or not UEFI)
    lockdown: str  # none | integrity | confidentiality, or "" when the kernel does not say

    def describe(self) -> str:
        """``on (lockdown: integrity)``, ``off``, ``unknown (...)``, as the console says it."""
        lockdown = f" (lockdown: {self.lockdown})" if self.lockdown else ""
        if self.enabled is None:
            return f"unknown (no SecureBoot variable){lockdown}"
        return ("on" if self.enabled else "off") + (lockdown if self.enabled or self.lockdown not in ("", "none")
                                                    else "")


def read(root: str = efivars.EFIVARS, lockdown: str = LOCKDOWN) -> State:
    enabled = efivars.secure_boot(root)
    try:
        with open(lockdown, "rb") as f:  # "none [integrity] confidentiality": the bracketed one is in force
            words = f.read(256).decode("ascii", "replace").split()
        mode = next((w[1:-1] for w in words if w.startswith("[") and w.endswith("]")), "")
    except OSError:
        mode = ""
    return State(enabled, mode)
