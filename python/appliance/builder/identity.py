"""Who an image is: its version and build id.

``make image VERSION=...`` names the version; by default it is the build's date (UTC,
or ``SOURCE_DATE_EPOCH``'s) and the start of the build id. The build id is a hash of
the build's inputs: what the build puts into the image itself (the init, its
configuration, the core) and the mkosi configuration the image is built from. Both go
into the image's ``/usr/lib/os-release`` as ``IMAGE_VERSION=`` and ``BUILD_ID=``, so
the UKI's ``.osrel`` section carries them and the init says them at every boot.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from appliance.esp import identity as running

IMAGE_ID = "appliance"
# Written by the build into the rendered tree; mkosi.finalize merges it into os-release.
FRAGMENT = "usr/lib/appliance/os-release.image"
OS_RELEASE = "usr/lib/os-release"
# Letters, digits and . _ ~ ^ -: safe unquoted in os-release and in an ESP file name.
# Never '+': it marks the boot counter in a UKI's file name (Automatic Boot Assessment).
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~^-]{0,63}")
# The mkosi configuration the image is built from, relative to the repository.
CONFIG_INPUTS = ("mkosi.conf", "mkosi.conf.d", "mkosi.extra", "mkosi.finalize", "mkosi.profiles",
                 "initramfs/modules.txt")


class IdentityError(Exception):
    pass


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise IdentityError(f"VERSION={version!r}: use at most 64 letters, digits and . _ ~ ^ -, starting with a "
                            "letter or digit (not '+': it marks boot counters in the ESP's file names)")
    return version


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def build_id(roots: Iterable[tuple[str, Path]], settings: Mapping[str, str]) -> str:
    """12 hex digits of a SHA-256 over ``roots`` (label, file or directory: every file's
    path and bytes, in a fixed order) and ``settings``."""
    h = hashlib.sha256()
    for label, root in roots:
        if not root.exists():
            continue
        for path in _files(root):
            name = f"{label}/{path.relative_to(root)}" if root.is_dir() else label
            h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for key in sorted(settings):
        h.update(f"{key}={settings[key]}\0".encode())
    return h.hexdigest()[:12]


def default_version(build: str, now: float | None = None) -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = int(epoch) if epoch and epoch.isdigit() else int(time.time() if now is None else now)
    return time.strftime("%Y.%m.%d.%H%M%S", time.gmtime(when)) + "-" + build[:8]  # ordered: make publish compares


def write_fragment(tree: Path, version: str, build: str, built_at: int | None = None) -> None:
    """The image's identity for os-release; ``built_at`` (default now, or SOURCE_DATE_EPOCH)
    is the floor of the machine's clock."""
    if built_at is None:
        built_at = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    path = tree / FRAGMENT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"IMAGE_ID={IMAGE_ID}\nIMAGE_VERSION={check_version(version)}\nBUILD_ID={build}\n"
                    f"{running.BUILT_AT}={built_at}\n")


def merge_os_release(tree: Path) -> bool:
    """In a finished image tree: put the fragment's lines into os-release in place of any
    with the same keys, and remove the fragment. False when there was none."""
    fragment = tree / FRAGMENT
    if not fragment.exists():
        return False
    lines = fragment.read_text().splitlines()
    keys = {line.split("=", 1)[0] for line in lines}
    path = tree / OS_RELEASE
    old = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in old if line.split("=", 1)[0] not in keys]
    path.unlink(missing_ok=True)  # it may be a link into a package's file
    path.write_text("\n".join(kept + lines) + "\n")
    fragment.unlink()
    return True
