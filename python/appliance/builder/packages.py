"""Debian packages for the core: ``packages.txt`` beside it, or ``PACKAGES=``.

They are added to mkosi's package list. What boots stays systemd-free and shell-free:
once the packages are in, mkosi.postinst.chroot runs ``check`` inside the image tree
(dpkg's database is still there) and refuses a package that pulls in systemd, udev or
a shell, naming the chain that pulled it (``python3-foo -> libbar -> systemd``).
Standard library only: ``check`` runs under the image's Python.
"""

from __future__ import annotations

import re
import subprocess
from collections import deque
from pathlib import Path

PACKAGES_FILE = "packages.txt"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# Never in what boots (the default profile): an init system, a device manager, shells.
# bash and dash are Debian's essential packages: always installed, removed from the tree
# by mkosi.conf's RemoveFiles=; these others would stay.
FORBIDDEN = ("systemd", "systemd-sysv", "udev", "libsystemd-shared", "sysvinit-core", "runit-init", "openrc",
             "busybox", "busybox-static", "zsh", "ksh", "mksh", "tcsh", "csh", "fish", "yash", "posh")
ALLOWED_BY_PROFILE = {"debug": ("busybox",)}  # the debug profile's shell


class PackagesError(Exception):
    pass


def wanted(core: Path, given: str = "") -> list[str]:
    """The packages asked for: ``packages.txt`` in a core directory (one a line, ``#``
    comments), then ``given`` (PACKAGES=, spaces or commas). Names are checked."""
    names: list[str] = []
    path = core / PACKAGES_FILE
    if core.is_dir() and path.is_file():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            word = line.split("#", 1)[0].strip()
            if word and not NAME_RE.fullmatch(word):
                raise PackagesError(f"{path}:{n}: {word!r} is not a Debian package name")
            if word:
                names.append(word)
    for word in re.split(r"[\s,]+", given.strip()):
        if word and not NAME_RE.fullmatch(word):
            raise PackagesError(f"PACKAGES=: {word!r} is not a Debian package name")
        if word:
            names.append(word)
    return list(dict.fromkeys(names))


def parse_status(text: str) -> dict[str, set[str]]:
    """Installed packages -> the installed packages they depend on, from lines of
    ``dpkg-query -W -f '${Package}\\t${Provides}\\t${Pre-Depends}, ${Depends}\\n'``.
    Every installed alternative counts; a virtual package maps to its providers."""
    raw: dict[str, list[str]] = {}
    providers: dict[str, set[str]] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0]:
            continue
        name, provides, depends = fields
        providers.setdefault(name, set()).add(name)
        for p in _names(provides):
            providers.setdefault(p, set()).add(name)
        raw[name] = _names(depends)
    return {name: {q for d in deps for q in providers.get(d, ()) if q != name} for name, deps in raw.items()}


def _names(field: str) -> list[str]:
    out = []
    for item in re.split(r"[,|]", field):
        word = item.strip().split(" ", 1)[0].split("(", 1)[0].split(":", 1)[0]
        if word:
            out.append(word)
    return out


def chains(graph: dict[str, set[str]], requested: list[str], forbidden: set[str]) -> list[list[str]]:
    """For each forbidden package reachable from a requested one: the shortest chain."""
    found: dict[str, list[str]] = {}
    for start in requested:
        if start not in graph:
            continue
        parent: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue:
            here = queue.popleft()
            if here in forbidden and here not in found:
                chain = [here]
                while parent[chain[-1]] is not None:
                    chain.append(parent[chain[-1]])  # type: ignore[arg-type]
                found[here] = chain[::-1]
            for nxt in sorted(graph.get(here, ())):
                if nxt not in parent:
                    parent[nxt] = here
                    queue.append(nxt)
    return [found[k] for k in sorted(found)]


def check(requested: list[str], profile: str = "default") -> list[str]:
    """Inside the image tree: what to refuse (empty when all is well)."""
    forbidden = set(FORBIDDEN) - set(ALLOWED_BY_PROFILE.get(profile, ()))
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Provides}\t${Pre-Depends}, ${Depends}\n"],
                         capture_output=True, text=True, check=True).stdout
    graph = parse_status(out)
    problems = []
    for chain in chains(graph, requested, forbidden):
        if len(chain) == 1:
            problems.append(f"{chain[0]} must not be in what boots: refused")
        else:
            problems.append(f"{chain[0]} pulls in {chain[-1]}, which must not be in what boots "
                            f"({' -> '.join(chain)}): refused; choose a package that does not need it")
    return problems
