"""Which Debian mirror to build from: the host's own, read from its apt configuration.

No registry host name is written into the repository; the mirror is whatever the
host already uses (``apt-get indextargets``) or what the user sets with MIRROR=.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


class MirrorError(Exception):
    pass


@dataclass(frozen=True)
class Mirrors:
    main: str
    security: str | None  # None: no security archive is configured, builds go without it


def parse_indextargets(text: str) -> Mirrors:
    """Find the main and security mirrors in ``apt-get indextargets`` output.

    Each line is ``RELEASE SITE`` (the --format used by ``host_mirrors``). The main
    mirror is the site serving a plain codename (``bookworm``), the security mirror
    the one serving ``<codename>-security``.
    """
    main: str | None = None
    security: str | None = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        release, site = parts
        site = site.rstrip("/")
        if release.endswith("-security"):
            security = security or site
        elif "-" not in release:
            main = main or site
    if main is None:
        raise MirrorError("the host's apt configuration names no Debian release archive")
    return Mirrors(main=main, security=security)


def host_mirrors(override: str | None = None, security_override: str | None = None) -> Mirrors:
    """The mirrors to build from: overrides first, else the host's apt configuration."""
    found: Mirrors | None = None
    if not override or security_override is None:
        try:
            out = subprocess.run(
                ["apt-get", "indextargets", "--format", "$(RELEASE) $(SITE)", "Created-By: Packages"],
                check=True, capture_output=True, text=True,
            ).stdout
            found = parse_indextargets(out)
        except (OSError, subprocess.CalledProcessError, MirrorError) as e:
            if not override:
                raise MirrorError(
                    f"cannot read the Debian mirror from the host's apt configuration ({e}); "
                    "set MIRROR=<url of a Debian mirror>"
                ) from e
    main = override.rstrip("/") if override else found.main if found else ""
    if security_override is not None:
        security = None if security_override in ("", "none") else security_override.rstrip("/")
    else:
        security = found.security if found else None
    return Mirrors(main=main, security=security)
