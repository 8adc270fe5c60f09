"""Whether this boot runs under UEFI Secure Boot, and the kernel's lockdown that follows.

The firmware says it in the global variable SecureBoot (one byte, 1 when enforced);
Debian's kernel, booted so, locks itself down ("integrity": only signed modules, no
/dev/mem, no kexec of unsigned kernels) and says which in securityfs. The init says
both at every boot, and the boot's state file on the ESP keeps them.
"""

from __future__ import annotations

import os
from typing import NamedTuple

EFIVARS = "/sys/firmware/efi/efivars"
GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"  # EFI_GLOBAL_VARIABLE
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


def read(efivars: str = EFIVARS, lockdown: str = LOCKDOWN) -> State:
    try:
        with open(os.path.join(efivars, f"SecureBoot-{GLOBAL}"), "rb") as f:
            raw = f.read(16)
        enabled: bool | None = len(raw) >= 5 and raw[4] == 1  # 4 bytes of attributes, then the value
    except OSError:
        enabled = None
    try:
        with open(lockdown, "rb") as f:  # "none [integrity] confidentiality": the bracketed one is in force
            words = f.read(256).decode("ascii", "replace").split()
        mode = next((w[1:-1] for w in words if w.startswith("[") and w.endswith("]")), "")
    except OSError:
        mode = ""
    return State(enabled, mode)
