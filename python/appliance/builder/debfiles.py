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


def download(sources_dir: Path, cache: Path, packages: list[str]) -> dict[str, Path]:
    """The candidate version of each package, downloaded into ``cache``/debs (older ones
    there removed); returns package -> its .deb."""
    sources_dir, cache = sources_dir.resolve(), cache.resolve()
    for d in ("lists/partial", "preferences.d"):
        (cache / d).mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    options = _apt_options(sources_dir, cache)
    apt = ["apt-get", "-q", *options]
    for cmd in ([*apt, "update"], [*apt, "download", *packages]):
        r = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
        if r.returncode != 0:
            step = "download " + " ".join(packages) if "download" in cmd else "update"
            raise DebError(f"apt-get {step} failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    found: dict[str, Path] = {}
    for package in packages:
        r = subprocess.run(["apt-cache", *options, "show", "--no-all-versions", package],
                           capture_output=True, text=True)
        version = next((line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
                        if line.startswith("Version:")), "")
        wanted = debs / f"{package}_{version.replace(':', '%3a')}_"
        here = sorted(debs.glob(f"{package}_*.deb"))
        newest = [d for d in here if str(d).startswith(str(wanted))]
        if not version or not newest:
            raise DebError(f"apt-get download {package} left no package {version} in {debs}")
        for old in here:
            if old not in newest:
                old.unlink()
        found[package] = newest[0]
    return found


def version_of(deb: Path) -> str:
    """A .deb's version, as its control file says."""
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def fetch(sources_dir: Path, cache: Path, wanted: dict[str, str]) -> dict[str, Path]:
    """``wanted``: package -> a file's path in it; returns package -> that file, under ``cache``."""
    cache = cache.resolve()
    debs = download(sources_dir, cache, list(wanted))
    found: dict[str, Path] = {}
    for package, path in wanted.items():
        deb = debs[package]
        out = cache / Path(path).name
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            try:
                member = tar.extractfile("./" + path.lstrip("/"))
            except KeyError:
                member = None
            if member is None:
                raise DebError(f"{deb.name} has no {path}")
            out.write_bytes(member.read())
        found[package] = out
    return found
