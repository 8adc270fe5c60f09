"""The core's Python dependencies: wheels for the image's Python, installed by the host's pip.

A core directory may carry ``requirements.txt`` (pinned; with ``--hash`` lines pip runs
with ``--require-hashes``) or a ``pyproject.toml`` with ``[project] dependencies``. pip
runs on the host, asks the package index the host's pip is configured for (and the
core's own ``wheels/`` directory), and installs wheels built for the image's Python:
CPython 3.13 on x86-64 with Debian trixie's glibc. Nothing is built from source: a
dependency with no such wheel is an error that names it and the ways out. The wheels
land in the Python's own ``/usr/local/lib/python3.13/dist-packages``, so the core, its
``multiprocessing`` children and ``subprocess`` of ``sys.executable`` all find them;
their ``.py`` files stay, so crash dumps show library frames with their source lines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

IMAGE_PYTHON = (3, 13)  # Debian trixie's python3
IMAGE_GLIBC = (2, 41)  # Debian trixie's libc6: manylinux wheels up to this glibc run
SITE_DIR = f"usr/local/lib/python{IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]}/dist-packages"
REQUIREMENTS = "requirements.txt"
PYPROJECT = "pyproject.toml"
WHEELS = "wheels"  # the core's own wheels, beside its requirements
LOG_NAME = "pip.log"


class DepsError(Exception):
    """The core's dependencies cannot be installed; the message says why and what to do."""


@dataclass(frozen=True)
class Wanted:
    source: Path  # requirements.txt or pyproject.toml
    requirements: tuple[str, ...]  # from pyproject.toml; empty for a requirements file
    hashes: bool  # requirements.txt with --hash: pip runs with --require-hashes


def wanted(core: Path) -> Wanted | None:
    """What the core asks for, or None (a single file, or a directory that asks nothing)."""
    if not core.is_dir():
        return None
    req, pyproject = core / REQUIREMENTS, core / PYPROJECT
    if req.is_file():
        text = req.read_text(errors="replace")
        return Wanted(req, (), re.search(r"--hash[= ]", text) is not None)
    if not pyproject.is_file():
        return None
    try:
        data = tomllib.loads(pyproject.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DepsError(f"{pyproject}: not valid TOML: {e}") from None
    deps = data.get("project", {}).get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise DepsError(f"{pyproject}: [project] dependencies must be a list of strings")
    return Wanted(pyproject, tuple(deps), False) if deps else None


def platforms() -> list[str]:
    """Every manylinux tag a wheel for the image may carry (pip expands none by itself)."""
    major, newest = IMAGE_GLIBC
    tags = [f"manylinux_{major}_{minor}_x86_64" for minor in range(newest, 4, -1)]
    return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def pip_command(want: Wanted, target: Path, cache: Path, python: str = sys.executable) -> list[str]:
    version = f"{IMAGE_PYTHON[0]}{IMAGE_PYTHON[1]}"
    cmd = [python, "-m", "pip", "install", "--target", str(target), "--only-binary=:all:",
           "--implementation", "cp", "--python-version", f"{IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]}",
           "--abi", f"cp{version}", "--abi", "abi3", "--abi", "none",
           "--no-compile", "--no-warn-script-location", "--disable-pip-version-check", "--progress-bar", "off",
           "--cache-dir", str(cache)]
    for tag in platforms():
        cmd += ["--platform", tag]
    wheels = want.source.parent / WHEELS
    if wheels.is_dir():
        cmd += ["--find-links", str(wheels)]
    if want.hashes:
        cmd.append("--require-hashes")
    if want.requirements:
        return cmd + ["--", *want.requirements]
    return cmd + ["-r", str(want.source)]


NO_WHEEL = re.compile(r"No matching distribution found for ([^\s;]+)")
HASH_MISSING = re.compile(r"(?:Hashes are required in --require-hashes mode|hashes for all requirements)")
HASH_MISMATCH = re.compile(r"THESE PACKAGES DO NOT MATCH THE HASHES")


def explain(output: str, want: Wanted) -> str:
    """pip's failure, said for a person building an image."""
    found = NO_WHEEL.search(output)
    if found:
        name = re.split(r"[<>=!~\[ ]", found.group(1), maxsplit=1)[0]
        debian = "python3-" + name.lower().replace("_", "-")
        return (f"the core needs {found.group(1)}, and there is no wheel of it for the image's Python "
                f"(CPython {IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]}, x86-64, glibc {IMAGE_GLIBC[0]}.{IMAGE_GLIBC[1]} or "
                f"older) on the package index or in {want.source.parent / WHEELS}/; nothing is built from source "
                f"for the image. Ways out: its Debian package ({debian}, if Debian has it) in "
                f"{want.source.parent / 'packages.txt'} instead, or a wheel of your own in "
                f"{want.source.parent / WHEELS}/")
    if HASH_MISMATCH.search(output):
        return f"a downloaded file does not match its hash in {want.source}: pip's words are in the log"
    if HASH_MISSING.search(output):
        return f"{want.source} has hashes, so every requirement (those they pull in too) needs one"
    last = [line for line in output.splitlines() if line.startswith("ERROR:")]
    return f"pip failed: {last[-1][len('ERROR:'):].strip() if last else 'see the log'}"


@dataclass(frozen=True)
class Installed:
    packages: list[tuple[str, str]]  # (name, version), from the .dist-info directories
    size: int  # bytes under the target


def installed(target: Path) -> Installed:
    packages = []
    for info in sorted(target.glob("*.dist-info")):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        packages.append((name, version))
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file() and not p.is_symlink())
    return Installed(packages, size)


def install(core: Path, extra: Path, cache: Path, log: Path, python: str = sys.executable) -> Installed | None:
    """Install the core's dependencies into the extra tree; None when it asks for none.
    pip's whole output goes to ``log``; DepsError says what failed."""
    want = wanted(core)
    if want is None:
        return None
    target = extra / SITE_DIR
    target.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = pip_command(want, target, cache, python)
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    if result.returncode != 0:
        raise DepsError(explain(log.read_text(errors="replace"), want))
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts: the image runs only the core
    return installed(target)
