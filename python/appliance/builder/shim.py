"""Debian's Microsoft-signed shim and its MokManager, from the image's own release.

Stock PCs trust Microsoft's UEFI CA; Debian's shim is signed by it and in turn trusts
the keys enrolled as MOKs. The files come from the packages ``shim-signed`` and
``shim-helpers-amd64-signed`` of the image's Debian release (so their SBAT level is
one that current firmware accepts), fetched with apt from the same sources mkosi uses
and cached; nothing is downloaded by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.builder import debfiles
from appliance.esp import layout as esp_layout

PACKAGES = {"shim-signed": "/usr/lib/shim/shimx64.efi.signed",
            "shim-helpers-amd64-signed": "/usr/lib/shim/mmx64.efi.signed"}


@dataclass(frozen=True)
class Shim:
    shim: Path  # \EFI\BOOT\BOOTX64.EFI
    mokmanager: Path  # \EFI\BOOT\mmx64.efi


MOK_ENROLL_FILE = "ENROLL_THIS_KEY_IN_MOKMANAGER.cer"  # at the ESP's root, for MokManager's "Enroll key from disk"


def layout(found: Shim, next_stage: Path, cert_der: Path) -> dict[str, Path]:
    """The ESP's files for a stock PC (ESP path -> file): shim where the firmware looks,
    MokManager beside it, ``next_stage`` (signed with our key: systemd-boot, or a UKI)
    where shim looks for it, and the certificate for MokManager to enroll on the first
    boot."""
    return {esp_layout.REMOVABLE_PATH: found.shim, esp_layout.MOKMANAGER: found.mokmanager,
            esp_layout.SHIM_NEXT_STAGE: next_stage, "/" + MOK_ENROLL_FILE: cert_der}


def fetch(sources_dir: Path, cache: Path) -> Shim:
    """The signed shim and MokManager of the release ``sources_dir`` (apt .sources) names."""
    found = debfiles.fetch(sources_dir, cache, PACKAGES)
    return Shim(found["shim-signed"], found["shim-helpers-amd64-signed"])
