"""Staging an update onto the ESP: one new image, tried on the next boots.

Used on the device (``appliance.update.stage``, the ESP mounted at /esp) and from a host
(``make update``, the ESP of a stick or disk image through mtools): both give an
``EspFiles``. The order of the writes is the design for power loss on FAT, which has no
atomic replace of an existing file:

1. the UKI under a name no entry names yet, read back and compared;
2. its entry under a temporary name (systemd-boot reads only ``*.conf``);
3. the entry renamed to ``appliance-<generation>+<tries>.conf``: from here on the next
   boot tries it.

A cut before step 3 leaves files no entry names; the next staging removes them. The
current and previous images are never touched while staging.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import NamedTuple

from appliance.esp import bootentries, layout, uki
from appliance.esp.bootentries import Entry
from appliance.esp.files import EspFiles

DEFAULT_TRIES = 3
RESERVE = 16 * 1024 * 1024  # left free for the crash history (the init's esp_free_floor)


class StageError(Exception):
    pass


class Staged(NamedTuple):
    version: str
    build_id: str
    generation: int
    tries: int
    entry: str  # its file name
    uki: str  # its ESP path


def check(data: bytes, secure_boot: bool = False) -> uki.Uki:
    """The file is a whole UKI for x86-64 (and, with Secure Boot on, signed)."""
    try:
        found = uki.read(io.BytesIO(data))
    except uki.UkiError as e:
        raise StageError(f"not an image to stage: {e}") from None
    if not found.identity.version:
        raise StageError("not an appliance image: its .osrel has no IMAGE_VERSION (build it with make image)")
    if secure_boot and not found.signed:
        raise StageError("Secure Boot is on and the image is not signed: it could not boot (build it with "
                         "SECURE_BOOT=shim or direct, with the key this machine trusts)")
    return found


def current_certificates(esp: EspFiles) -> list[bytes]:
    """The certificates in the signature of the newest committed image (none: unsigned)."""
    committed = sorted(e.generation for _, e in _entries(esp) if e.tries_left is None)
    if not committed:
        return []
    for name in esp.list(layout.IMAGES_DIR):
        if name.startswith(f"{committed[-1]:06d}-") and name.endswith(".efi"):
            data = esp.read(f"{layout.IMAGES_DIR}/{name}")
            try:
                f = io.BytesIO(data)
                return uki.certificates(f, uki.read(f))
            except uki.UkiError:
                return []
    return []


def check_signer(data: bytes, found: uki.Uki, current: list[bytes]) -> None:
    """An image signed by the running image's key, when that one is signed: another key
    (or none) would be refused by the firmware or shim at every try."""
    if not current:
        return
    try:
        mine = uki.certificates(io.BytesIO(data), found)
    except uki.UkiError as e:
        raise StageError(f"its signature cannot be read: {e}") from None
    if not mine:
        raise StageError("the image this machine runs is signed and this one is not: with Secure Boot on it "
                         "would be refused (build it with the same SECURE_BOOT and key)")
    if not set(mine) & set(current):
        raise StageError("signed by another key than the image this machine runs: the firmware or shim would "
                         "refuse it at every try (build it with the same key: KEYS_DIR=, SB_KEY=/SB_CERT=)")


def _entries(esp: EspFiles) -> list[tuple[str, Entry]]:
    return [(name, e) for name in esp.list(layout.ENTRIES_DIR) if (e := bootentries.parse_name(name))]


def clean(esp: EspFiles, say: Callable[[str], None] = lambda _: None) -> None:
    """Remove what a cut left (temporary entries, images no entry names) and any staged
    image not tried yet: at most one is staged at a time."""
    for name in esp.list(layout.ENTRIES_DIR):
        if name.endswith(".tmp"):
            esp.delete(f"{layout.ENTRIES_DIR}/{name}")
    for name, e in _entries(esp):
        if e.tries_left is not None and e.tries_done == 0:
            say(f"replacing the staged image of generation {e.generation}, not tried yet")
            esp.delete(f"{layout.ENTRIES_DIR}/{name}")
    named = {e.generation for _, e in _entries(esp)}
    for name in esp.list(layout.IMAGES_DIR):
        generation = name[:6]
        if not (generation.isdigit() and int(generation) in named):
            esp.delete(f"{layout.IMAGES_DIR}/{name}")


STEPS = ("writing the image", "reading it back", "writing its entry", "renaming its entry")


def stage(esp: EspFiles, data: bytes, tries: int = DEFAULT_TRIES, reserve: int = RESERVE,
          secure_boot: bool = False, say: Callable[[str], None] = lambda _: None,
          step: Callable[[str], None] = lambda _: None) -> Staged:
    """Stage ``data`` (a UKI) to be tried on the next boots, ``tries`` times at most.
    ``step`` hears each of STEPS as it begins (the tests cut the power there)."""
    if not 1 <= tries <= 9:
        raise StageError(f"tries={tries}: from 1 to 9")
    found = check(data, secure_boot)
    version = found.identity.version
    entries = _entries(esp)
    if not entries:
        raise StageError("this ESP has no boot entries: it was not made by make image with systemd-boot "
                         "(flash a current image once; then updates can be staged)")
    check_signer(data, found, current_certificates(esp))
    clean(esp, say=say)
    free = esp.free()
    if free - len(data) < reserve:
        raise StageError(f"not enough room on the ESP: {len(data) >> 20} MiB to write, {free >> 20} MiB free, "
                         f"and {reserve >> 20} MiB stay free for the crash history")
    generation = max(e.generation for _, e in _entries(esp) or entries) + 1
    path = bootentries.uki_path(generation, version)
    step(STEPS[0])
    esp.write(path, data)
    step(STEPS[1])
    if hashlib.sha256(esp.read(path)).digest() != hashlib.sha256(data).digest():
        esp.delete(path)
        raise StageError(f"{path} did not read back as written: the medium may be failing")
    entry = Entry(generation, tries)
    tmp = f"{layout.ENTRIES_DIR}/{entry.name}.tmp"
    step(STEPS[2])
    esp.write(tmp, bootentries.entry_text(generation, version, path).encode())
    step(STEPS[3])
    esp.rename(tmp, f"{layout.ENTRIES_DIR}/{entry.name}")
    return Staged(version, found.identity.build_id, generation, tries, entry.name, path)
