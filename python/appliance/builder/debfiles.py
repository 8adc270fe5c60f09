"""Files out of Debian packages of the image's own release, for the ESP.

Shim, MokManager and systemd-boot are not installed into the image: they are EFI
programs the firmware runs before it. apt fetches their packages from the same sources
mkosi uses (the rendered ``.sources``), into a cache; the files are taken out with
dpkg-deb. Nothing is downloaded by hand.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path


class DebError(Exception):
    pass


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


def fetch(sources_dir: Path, cache: Path, wanted: dict[str, str]) -> dict[str, Path]:
    """``wanted``: package -> a file's path in it; returns package -> that file, under ``cache``."""
    sources_dir, cache = sources_dir.resolve(), cache.resolve()
    for d in ("lists/partial", "preferences.d"):
        (cache / d).mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    apt = ["apt-get", "-q", *_apt_options(sources_dir, cache)]
    for cmd in ([*apt, "update"], [*apt, "download", *wanted]):
        r = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
        if r.returncode != 0:
            step = "download " + " ".join(wanted) if "download" in cmd else "update"
            raise DebError(f"apt-get {step} failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    found: dict[str, Path] = {}
    for package, path in wanted.items():
        newest = sorted(debs.glob(f"{package}_*.deb"))
        if not newest:
            raise DebError(f"apt-get download {package} left no package in {debs}")
        out = cache / Path(path).name
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(newest[-1])], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            try:
                member = tar.extractfile("./" + path.lstrip("/"))
            except KeyError:
                member = None
            if member is None:
                raise DebError(f"{newest[-1].name} has no {path}")
            out.write_bytes(member.read())
        found[package] = out
    return found
