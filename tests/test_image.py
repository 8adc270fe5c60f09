"""What `make image` built: opened, unpacked and checked, not booted."""

import io
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from appliance.builder import inspect, stdlibzip
from appliance.builder.render import read_module_list
from appliance.esp import gpt, layout
from appliance.init.modules import module_name

pytestmark = pytest.mark.image

FORBIDDEN_NAMES = {"systemd", "systemd-udevd", "udevadm", "udevd", "agetty", "getty", "login", "sulogin",
                   "sh", "bash", "dash", "rbash", "busybox"}
FORBIDDEN_PREFIXES = ("libsystemd-shared", "libsystemd-core", "libudev")


@pytest.fixture(scope="module")
def initrd(built_efi: Path) -> dict[str, inspect.Entry]:
    return {e.path: e for e in inspect.initrd_entries(built_efi)}


def test_what_boots_is_systemd_free(initrd: dict[str, inspect.Entry]) -> None:
    offenders = []
    for path in initrd:
        name = PurePosixPath(path).name
        parts = PurePosixPath(path).parts
        if name in FORBIDDEN_NAMES or name.startswith(FORBIDDEN_PREFIXES) or "systemd" in parts:
            offenders.append(path)
    assert offenders == [], f"the default image must not contain: {offenders}"
    assert len(initrd) > 500  # the check ran over a real tree


def test_init_is_python(initrd: dict[str, inspect.Entry]) -> None:
    init = initrd["init"]
    assert init.is_file and init.mode & 0o111
    assert init.data.startswith(b"#!/usr/bin/python3 ")
    assert "appliance.init.main" in init.data.decode()
    python = initrd["usr/bin/python3"]
    target = python.link_target if python.is_symlink else "python3"
    assert initrd[f"usr/bin/{target}"].data[:4] == b"\x7fELF"
    assert "etc/appliance/init.conf" in initrd
    assert any(p.startswith("usr/lib/appliance/python/appliance/init/__pycache__/main.") for p in initrd)


def test_kernel_command_line(built_efi: Path) -> None:
    cmdline = inspect.sections(built_efi)[".cmdline"].rstrip(b"\0").decode().split()
    assert "console=ttyS0,115200" in cmdline and "console=tty0" in cmdline
    assert cmdline.index("console=tty0") < cmdline.index("console=ttyS0,115200")  # serial is /dev/console
    assert any(w.startswith("panic=") and int(w.split("=")[1]) > 0 for w in cmdline)
    assert "PYTHONHASHSEED=0" in cmdline


def test_listed_modules_are_in_the_image(repo: Path, initrd: dict[str, inspect.Entry]) -> None:
    present = {module_name(p) for p in initrd if ".ko" in PurePosixPath(p).name}
    builtin_files = [e for p, e in initrd.items() if p.endswith("/modules.builtin")]
    builtin = {module_name(line) for e in builtin_files for line in e.data.decode().split()}
    missing = [m for m in read_module_list(repo / "initramfs/modules.txt")
               if m not in present and m not in builtin]
    assert missing == []
    assert len(present) < 120  # trimmed, not the whole kernel


def test_disk_image_boots_through_shim_and_systemd_boot(built_raw: Path, built_efi: Path, tmp_path: Path) -> None:
    """make image's default (SECURE_BOOT=shim): Debian's shim at the removable-media path,
    MokManager beside it, systemd-boot (signed by us) where shim looks, our certificate at
    the root; systemd-boot's configuration and one committed entry running our UKI."""
    from appliance.builder import signing
    from appliance.esp import bootentries, uki
    from appliance.media.espfs import EspImage
    parts = gpt.read_partitions(str(built_raw))
    assert [p.is_esp for p in parts] == [True]
    esp = EspImage(built_raw)
    shim = esp.read(layout.REMOVABLE_PATH)
    assert shim[:2] == b"MZ" and b"Microsoft" in shim
    assert esp.read(layout.MOKMANAGER)[:2] == b"MZ"
    key = signing.ensure_key(signing.default_keys_dir())
    (tmp_path / "sd-boot.efi").write_bytes(esp.read(layout.SHIM_NEXT_STAGE))
    signing.verify(tmp_path / "sd-boot.efi", key.cert)
    assert b"#### LoaderInfo: systemd-boot " in (tmp_path / "sd-boot.efi").read_bytes()
    assert esp.read(layout.LOADER_CONF).decode() == bootentries.LOADER_CONF_TEXT
    version = uki.read_path(str(built_efi)).identity.version
    assert esp.list(layout.ENTRIES_DIR) == ["appliance-000001.conf"]  # committed: no boot counter
    path = bootentries.uki_path(1, version)
    assert esp.read(f"{layout.ENTRIES_DIR}/appliance-000001.conf").decode() == bootentries.entry_text(
        1, version, path)
    assert esp.read(path) == built_efi.read_bytes()
    signing.verify(built_efi, key.cert)
    der = esp.read("/ENROLL_THIS_KEY_IN_MOKMANAGER.cer")
    assert der == signing.der(key.cert, tmp_path / "key.cer").read_bytes() and der[:1] == b"\x30"  # DER: a SEQUENCE


def test_the_image_knows_who_it_is(built_efi: Path, initrd: dict[str, inspect.Entry]) -> None:
    """The version and build id are in the UKI's .osrel and in the os-release the init reads."""
    from appliance.esp import identity, uki
    found = uki.read_path(str(built_efi))
    assert found.os_release["IMAGE_ID"] == "appliance" and found.os_release["ID"] == "debian"
    assert found.identity.version and len(found.identity.build_id) == 12
    inside = identity.parse(initrd["usr/lib/os-release"].data)
    assert (inside["IMAGE_VERSION"], inside["BUILD_ID"]) == found.identity[:2]
    assert found.identity.built_at > 1_700_000_000 and inside[identity.BUILT_AT] == str(found.identity.built_at)
    assert "usr/lib/appliance/os-release.image" not in initrd  # merged, not left behind


def test_the_standard_library_is_one_archive_with_its_sources(initrd: dict[str, inspect.Entry]) -> None:
    """build/stdlibzip.py: every module with its source (for tracebacks) and unchecked bytecode
    (anything else, zipimport would recompile from source at every boot)."""
    archive = zipfile.ZipFile(io.BytesIO(initrd[stdlibzip.ARCHIVE].data))
    names = set(archive.namelist())
    for module in ("json/decoder", "asyncio/base_events", "email/message", "http/client", "typing", "threading"):
        assert {f"{module}.py", f"{module}.pyc"} <= names, module
    for info in archive.infolist():
        if info.filename.endswith(".pyc"):
            assert archive.read(info)[4:8] == b"\x01\x00\x00\x00", f"{info.filename}: not unchecked-hash bytecode"
    # Loose: os.py (Python's landmark), venv (it reads files beside it), modules that are links
    # (Debian's sitecustomize and _sysconfigdata), each with its bytecode; no bytecode alone.
    loose = [p for p in initrd if p.startswith(stdlibzip.STDLIB + "/") and p.endswith(".py")
             and not p.startswith(f"{stdlibzip.STDLIB}/venv/")]
    assert sorted(p for p in loose if not initrd[p].is_symlink) == [f"{stdlibzip.STDLIB}/os.py"]
    sources = {PurePosixPath(p).stem for p in loose}
    orphans = [p for p in initrd if p.startswith(stdlibzip.STDLIB + "/") and p.endswith(".pyc")
               and "/venv/" not in p and PurePosixPath(p).name.split(".")[0] not in sources]
    assert orphans == []
    assert len(names) > 1000  # the whole standard library, not a part of it
