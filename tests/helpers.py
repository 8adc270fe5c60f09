"""What the tests share: an ESP in a folder, the ESP's layout, a supervisor's duties that
record, and the QEMU machine fixture's helpers. Paths come from ``appliance.esp.layout``,
never spelled here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.builder import bootmgr, disk, shim, signing
from appliance.esp import layout, uki
from appliance.esp.files import MountedEsp
from appliance.harness.machine import Machine
from appliance.init.supervise import Duties
from appliance.media.espfs import EspImage

__all__ = ["MatrixMachine", "Recorder", "act", "always", "esp_folder", "layout", "on_esp", "shim_layout",
           "signed_layouts"]


def esp_folder(tmp_path: Path) -> MountedEsp:
    """A folder standing in for a mounted ESP."""
    return MountedEsp(str(tmp_path))


def on_esp(tmp_path: Path, path: str) -> Path:
    """Where an ESP path (``layout.BACKOFF``) lies in a folder standing in for the ESP."""
    return tmp_path / path.lstrip("/")


class Recorder(Duties):
    """A supervisor's duties that keep what the core wrote and what the loop said."""

    def __init__(self, stderr: bytearray | None = None, said: list[str] | None = None) -> None:
        self.stderr = stderr if stderr is not None else bytearray()
        self.said = said if said is not None else []
        self.flushes = 0
        self.healthy_calls = 0

    def output(self, data: bytes) -> None:
        self.stderr.extend(data)

    def say(self, text: str) -> None:
        self.said.append(text)

    def flush(self) -> None:
        self.flushes += 1

    def healthy(self) -> None:
        self.healthy_calls += 1


# A machine booting the test image (tests/cores/matrix), named for its console log in
# build/test-logs; keyword arguments go to Machine. The fixture ``matrix`` (conftest) makes them.
MatrixMachine = Callable[..., Machine]


def matrix_machine(image: Path, tmp_path: Path, log_dir: Path) -> MatrixMachine:
    def make(name: str, **kw: Any) -> Machine:
        return Machine(image, tmp_path, name=name, log_dir=log_dir, **kw)
    return make


# -- Secure Boot: an image laid out as make image does, signed with a key made for the test -----
def shim_layout(built_raw: Path, efi: Path, key: signing.Key, d: Path) -> dict[str, Path]:
    """make image's layout for a stock PC, around ``efi``: the shim and MokManager that
    make image fetched, taken from its image rather than fetched again."""
    esp = EspImage(built_raw)
    found = shim.Shim(d / "shimx64.efi", d / "mmx64.efi")
    found.shim.write_bytes(esp.read(disk.REMOVABLE_PATH))
    found.mokmanager.write_bytes(esp.read(layout.MOKMANAGER))
    return shim.layout(found, efi, signing.der(key.cert, d / shim.MOK_ENROLL_FILE))


def signed_layouts(raw: Path, built_raw: Path, d: Path) -> dict[str, tuple[Path, signing.Key]]:
    """``raw`` (built unsigned) laid out as make image does (systemd-boot, its entry, the UKI;
    shim first for "ms", a stock PC), every EFI program signed with a key made for the test;
    "own": the layout for an owner's machine (the key in db)."""
    key = signing.ensure_key(d / "keys")
    efi = d / "appliance.efi"
    signing.sign(raw.parent / "appliance.efi", efi, key)  # the test image is built unsigned
    boot_manager = d / "systemd-bootx64.efi"
    boot_manager.write_bytes(EspImage(raw).read(bootmgr.REMOVABLE_PATH))  # unsigned there too
    files = bootmgr.esp_files(efi, uki.read_path(str(efi)).identity.version, boot_manager, d / "esp", key)
    disk.make_disk(efi, d / "own.raw", files=files)
    disk.make_disk(efi, d / "ms.raw", files={**files, **shim_layout(built_raw, files[bootmgr.REMOVABLE_PATH], key,
                                                                    d)})
    return {"own": (d / "own.raw", key), "ms": (d / "ms.raw", key)}


# -- the matrix test core's client (tests/cores/matrix): what its next boots do ------------------
def act(m: Machine, action: bytes) -> None:
    """At the next boot, once: ``raise``, ``segv``, ``oom``, ``panic TOKEN``, ``stage``, ..."""
    m.esp_write(layout.TEST_ACTION, action)


def always(m: Machine, action: bytes) -> None:
    """At every boot (a crash loop, a flood)."""
    m.esp_write(layout.TEST_ALWAYS, action)


# -- the monitor (Machine(display=...)), read by OCR -------------------------------------------
# Characters that OCR takes for one another in the console's font: the version's build hash
# 'b0cef4b3' was read 'bOcef4b3', '/dev/vda1' read '/dev/udal'. Case is kept: the banner's
# capitals are what tells it from the init's lines ('PREVIOUS BOOT' against 'previous boot').
_LOOKALIKE = str.maketrans({"O": "0", "o": "0", "I": "1", "l": "1", "|": "1", "!": "1", "v": "u"})


def flat(text: str) -> str:
    """OCR's text without its blanks, look-alike characters folded together: a space it adds or
    drops inside a word, or an O read for a 0, is no failure."""
    return "".join(text.split()).translate(_LOOKALIKE)


def shows(m: Machine, name: str, *expected: str, absent: tuple[str, ...] = ()) -> str:
    """The screen now, read by OCR: each of ``expected`` on it, none of ``absent``."""
    text = m.screen_text(name)
    seen = flat(text)
    for e in expected:
        assert flat(e) in seen, f"{e!r} is not on the screen ({name}); OCR read:\n{text}"
    for a in absent:
        assert flat(a) not in seen, f"{a!r} is on the screen ({name}); OCR read:\n{text}"
    return text
