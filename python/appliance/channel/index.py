"""The channel's index (``channel.json``, a TUF target): its releases, each with its
rollout; which one a machine takes. Pure, used by the publisher and by the machine,
which reads it as hostile bytes (TUF checked its hash, not its sense)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, NamedTuple

INDEX = "channel.json"  # the index's target path
IMAGES = "images"  # the images' target paths: images/appliance-<version>.efi
MAX_INDEX = 256 * 1024  # bytes: the index is small (a few releases)
MAX_RELEASES = 32
KEEP = 3  # releases a channel lists (and keeps the images of)
SEGMENT = re.compile(r"~|\d+|[A-Za-z]+")


class BadIndex(ValueError):
    """The index makes no sense (said, never half-trusted)."""


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """A sort key for versions, as systemd orders them (the UAPI version format, simplified):
    runs of digits compare as numbers, runs of letters as text, a number is newer than
    letters in the same place, '~' is older than anything (even the end: 1.0~rc1 < 1.0),
    and other characters only separate. So 2026.12.03.101500-ab12 < 2026.12.03.101501-00ff."""
    key = []
    for seg in SEGMENT.findall(version):
        if seg == "~":
            key.append((0, 0, ""))
        elif seg.isdigit():
            key.append((3, int(seg), ""))
        else:
            key.append((2, 0, seg))
    key.append((1, 0, ""))  # the end: after '~', before any further segment
    return tuple(key)


def newer(a: str, b: str) -> bool:
    """Whether version ``a`` is newer than ``b``."""
    return version_key(a) > version_key(b)


def in_rollout(machine_id: str, version: str, percent: float) -> bool:
    """Whether this machine takes ``version`` at ``percent``: a stable choice (the same
    machine, the same answer, at every check), and a wider rollout keeps everyone it had
    (a machine's place is fixed per version, from 0 to 9999). Each version draws anew, so
    the same machines are not always the first."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    place = int.from_bytes(hashlib.sha256(f"appliance-rollout\0{version}\0{machine_id}".encode()).digest()[:8],
                           "big") % 10000
    return place < round(percent * 100)


class Release(NamedTuple):
    version: str
    build_id: str
    target: str  # its TUF target path
    rollout: float = 100.0  # percent of machines
    paused: bool = False
    published: str = ""  # when (UTC, ISO 8601)

    def describe(self) -> str:
        state = "paused" if self.paused else f"rollout {self.rollout:g}%"
        return f"{self.version} ({state})"


class Index(NamedTuple):
    releases: tuple[Release, ...]  # oldest first
    signers: tuple[str, ...] = ()  # sha256 of the Secure Boot certificates the images are signed with; () unsigned

    @property
    def newest(self) -> Release | None:
        return self.releases[-1] if self.releases else None

    def dump(self) -> bytes:
        return (json.dumps({"releases": [r._asdict() for r in self.releases], "signers": list(self.signers)},
                           indent=1, sort_keys=True) + "\n").encode()


def image_target(version: str) -> str:
    return f"{IMAGES}/appliance-{version}.efi"


def _text(raw: dict[str, Any], key: str, limit: int = 200) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str) or len(value) > limit:
        raise BadIndex(f"{key!r} is not a short text")
    return value


def parse(data: bytes) -> Index:
    """The index in ``data``; BadIndex (a ValueError) says what is wrong with it."""
    if len(data) > MAX_INDEX:
        raise BadIndex(f"{len(data)} bytes: more than an index has ({MAX_INDEX})")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BadIndex(f"not JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("releases"), list):
        raise BadIndex("no list of releases")
    if len(raw["releases"]) > MAX_RELEASES:
        raise BadIndex(f"{len(raw['releases'])} releases: more than {MAX_RELEASES}")
    releases = []
    for r in raw["releases"]:
        if not isinstance(r, dict):
            raise BadIndex("a release is not an object")
        rollout = r.get("rollout", 100)
        if isinstance(rollout, bool) or not isinstance(rollout, (int, float)) or not 0 <= rollout <= 100:
            raise BadIndex(f"rollout {rollout!r}: not a percentage")
        paused = r.get("paused", False)
        if not isinstance(paused, bool):
            raise BadIndex(f"paused {paused!r}: not true or false")
        version, target = _text(r, "version", 64), _text(r, "target")
        if not version or target != image_target(version):
            raise BadIndex(f"release {version!r}: its target {target!r} is not {image_target(version)!r}")
        releases.append(Release(version, _text(r, "build_id", 64), target, float(rollout), paused,
                                _text(r, "published", 40)))
    signers = raw.get("signers", [])
    if not isinstance(signers, list) or not all(isinstance(s, str) and len(s) == 64 for s in signers):
        raise BadIndex("signers: not a list of SHA-256 digests")
    return Index(tuple(releases), tuple(signers))


class Choice(NamedTuple):
    release: Release | None  # the one to take, or None
    why: str  # what to say


def choose(index: Index, running: str, machine_id: str, rolled_back: frozenset[str] = frozenset()) -> Choice:
    """The newest release newer than ``running`` that this machine is in, not paused and
    not rolled back here before; else why none."""
    newest = index.newest
    if newest is None:
        return Choice(None, "the channel has no release")
    candidates = [r for r in index.releases if newer(r.version, running)]
    if not candidates:
        return Choice(None, f"nothing newer than {running} (the channel's newest: {newest.version})")
    said = []
    for r in reversed(candidates):
        if r.version in rolled_back:
            said.append(f"{r.version} was rolled back on this machine: not tried again until a newer one")
        elif r.paused:
            said.append(f"{r.version} is paused")
        elif not in_rollout(machine_id, r.version, r.rollout):
            said.append(f"{r.version} is not for this machine yet (rollout {r.rollout:g}%)")
        else:
            return Choice(r, f"{r.version} is newer than {running} (rollout {r.rollout:g}%)")
    return Choice(None, "; ".join(said))
