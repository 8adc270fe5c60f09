"""Debian's Microsoft-signed shim and its MokManager, from the image's own release.

Stock PCs trust Microsoft's UEFI CA; Debian's shim is signed by it and in turn trusts
the keys enrolled as MOKs. The files come from the packages ``shim-signed`` and
``shim-helpers-amd64-signed`` of the image's Debian release (so their SBAT level is
one that current firmware accepts), fetched with apt from the same sources mkosi uses
and cached; nothing is downloaded by hand.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

PACKAGES = {"shim-signed": "shimx64.efi.signed", "shim-helpers-amd64-signed": "mmx64.efi.signed"}


class ShimError(Exception):
    pass


@dataclass(frozen=True)
class Shim:
    shim: Path  # \EFI\BOOT\BOOTX64.EFI
    mokmanager: Path  # \EFI\BOOT\mmx64.efi


MOK_ENROLL_FILE = "ENROLL_THIS_KEY_IN_MOKMANAGER.cer"  # at the ESP's root, for MokManager's "Enroll key from disk"


def layout(found: Shim, uki: Path, cert_der: Path) -> dict[str, Path]:
    """The ESP's files for a stock PC (ESP path -> file): shim where the firmware looks,
    MokManager beside it, the signed UKI where shim looks for its next stage, and the
    certificate for MokManager to enroll on the first boot."""
    return {"/EFI/BOOT/BOOTX64.EFI": found.shim, "/EFI/BOOT/mmx64.efi": found.mokmanager,
            "/EFI/BOOT/grubx64.efi": uki, "/" + MOK_ENROLL_FILE: cert_der}


def _apt_options(sources_dir: Path, cache: Path) -> list[str]:
    options = {
        "Dir::Etc::SourceList": "/dev/null", "Dir::Etc::SourceParts": str(sources_dir),
        "Dir::State::Lists": str(cache / "lists"), "Dir::Cache": str(cache / "apt"),
        "Dir::State::Status": "/dev/null", "Dir::Etc::Preferences": "/dev/null",
        "Dir::Etc::PreferencesParts": str(cache / "preferences.d"), "APT::Architecture": "amd64",
        "APT::Architectures": "amd64",
        "APT::Sandbox::User": "root",
    }
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def fetch(sources_dir: Path, cache: Path) -> Shim:
    """The signed shim and MokManager of the release ``sources_dir`` (apt .sources) names."""
    sources_dir, cache = sources_dir.resolve(), cache.resolve()
    for d in ("lists/partial", "preferences.d"):
        (cache / d).mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    apt = ["apt-get", "-q", *_apt_options(sources_dir, cache)]
    for cmd in ([*apt, "update"], [*apt, "download", *PACKAGES]):
        r = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
        if r.returncode != 0:
            step = "download " + " ".join(PACKAGES) if "download" in cmd else "update"
            raise ShimError(f"apt-get {step} failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    found: dict[str, Path] = {}
    for package, name in PACKAGES.items():
        newest = sorted(debs.glob(f"{package}_*.deb"))
        if not newest:
            raise ShimError(f"apt-get download {package} left no package in {debs}")
        out = cache / name
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(newest[-1])], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.extractfile(f"./usr/lib/shim/{name}")
            if member is None:
                raise ShimError(f"{newest[-1].name} has no /usr/lib/shim/{name}")
            out.write_bytes(member.read())
        found[name] = out
    return Shim(found["shimx64.efi.signed"], found["mmx64.efi.signed"])
