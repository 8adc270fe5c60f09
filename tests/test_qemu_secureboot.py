"""Secure Boot, as stock PCs ship it: Microsoft's keys enrolled, enforced (OVMF with SMM)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from appliance.builder import disk, signing
from appliance.esp import layout, records
from appliance.harness.machine import Machine
from tests.helpers import act, shim_layout, shows, signed_layouts

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def unsigned_efi(repo: Path) -> Path:
    """The UKI as mkosi made it, before make image signed it."""
    path = repo / "build/mkosi/appliance.efi"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make image`")
    return path


def test_an_unsigned_image_is_refused_before_any_kernel_runs(unsigned_efi: Path, qemu_ready: None, tmp_path: Path,
                                                             log_dir: Path) -> None:
    """SECURE_BOOT=off on a PC with Secure Boot on: the firmware refuses the image."""
    raw = tmp_path / "unsigned.raw"
    disk.make_disk(unsigned_efi, raw)
    m = Machine(raw, tmp_path / "m", name="secureboot-unsigned-refused", secure_boot="ms", log_dir=log_dir)
    with m:
        m.expect(r"BdsDxe: failed to load Boot\d+ [^\n]*: Access Denied", 180)
        m.watch(5)
        m.power_cut()
    log = m.output_since_start()
    assert "EFI stub" not in log and "init: " not in log


@pytest.fixture(scope="module")
def signed(unsigned_efi: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, signing.Key]:
    """The image's UKI signed with a key made for the test (SECURE_BOOT=direct's layout)."""
    d = tmp_path_factory.mktemp("signed")
    key = signing.ensure_key(d / "keys")
    efi = d / "appliance.efi"
    signing.sign(unsigned_efi, efi, key)
    raw = d / "appliance.raw"
    disk.make_disk(efi, raw)
    return raw, key


def test_signed_image_boots_with_secure_boot_enforced_and_the_kernel_locked_down(
        signed: tuple[Path, signing.Key], qemu_ready: None, tmp_path: Path, log_dir: Path) -> None:
    """An owner's machine (their certificate in db): the stub runs under Secure Boot, the
    kernel locks itself down, signed modules load (the ESP mounts), the core runs."""
    raw, key = signed
    m = Machine(raw, tmp_path, name="secureboot-own-boots", secure_boot="own", db_cert=key.cert, log_dir=log_dir)
    with m:
        m.wait_boot(timeout=180)
        m.expect(r"init: secure boot: on \(lockdown: integrity\)", 60)
        m.expect(r"init: ESP mounted: /dev/vda1", 60)  # vfat and virtio_blk: signed modules under lockdown
        m.expect(r"demo core: ready", 60)
        m.power_cut()
    assert b"\nsecure-boot = on (lockdown: integrity)\n" in m.esp_read(layout.LAST_BOOT)


def test_a_changed_byte_or_another_key_is_refused(signed: tuple[Path, signing.Key], qemu_ready: None,
                                                  tmp_path: Path, log_dir: Path) -> None:
    raw, key = signed
    other = signing.ensure_key(tmp_path / "other-keys")
    for name, cert in (("secureboot-own-byte-changed", key.cert), ("secureboot-own-other-key", other.cert)):
        m = Machine(raw, tmp_path / name, name=name, secure_boot="own", db_cert=cert, log_dir=log_dir)
        if name.endswith("byte-changed"):
            efi = bytearray(m.esp_read(layout.REMOVABLE_PATH))
            efi[len(efi) // 2] ^= 0x01
            m.esp_write(layout.REMOVABLE_PATH, bytes(efi))
        with m:
            m.expect(r"BdsDxe: failed to load Boot\d+ [^\n]*: (Access Denied|Security Violation)", 180)
            m.power_cut()
        log = m.output_since_start()
        assert "EFI stub" not in log and "init: " not in log, name


@pytest.fixture(scope="module")
def shim_image(signed: tuple[Path, signing.Key], unsigned_efi: Path, built_raw: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, signing.Key]:
    """For a stock PC: Debian's Microsoft-signed shim, its MokManager, our signed UKI where
    shim looks for its next stage, and our certificate for MokManager to enroll."""
    _, key = signed
    d = tmp_path_factory.mktemp("shim")
    efi = d / "appliance.efi"
    signing.sign(unsigned_efi, efi, key)
    raw = d / "appliance.raw"
    disk.make_disk(efi, raw, files=shim_layout(built_raw, efi, key, d))
    return raw, key


def test_stock_pc_with_our_key_enrolled_as_a_mok_boots_make_images_image(
        built_raw: Path, qemu_ready: None, tmp_path: Path, log_dir: Path) -> None:
    """What make image built, as shipped: shim, then systemd-boot, then the UKI, each
    checked against the key make image made and signed with."""
    key = signing.ensure_key(signing.default_keys_dir())
    m = Machine(built_raw, tmp_path, name="secureboot-shim-mok", secure_boot="ms", mok_cert=key.cert,
                log_dir=log_dir)
    with m:
        m.expect(r"EFI stub: UEFI Secure Boot is enabled", 180)
        m.wait_boot(timeout=120)
        m.expect(r"init: secure boot: on \(lockdown: integrity\)", 60)
        m.expect(r"init: ESP mounted: /dev/vda1", 60)
        m.expect(r"demo core: ready", 60)
        m.power_cut()


DOWN = "\x1b[B"


def test_stock_pc_first_boot_enrolls_our_key_through_mokmanager_as_a_person_would(
        shim_image: tuple[Path, signing.Key], qemu_ready: None, tmp_path: Path, log_dir: Path) -> None:
    """Without our key, shim refuses the UKI and hands over to MokManager; the harness
    walks its menus over the serial console, as docs/secure-boot.md tells a person to, and the
    next boot reaches the core with Secure Boot on."""
    raw, _ = shim_image
    m = Machine(raw, tmp_path, name="secureboot-shim-enroll", secure_boot="ms", log_dir=log_dir)
    steps = [  # (what the screen shows, the keys pressed then)
        ("Verification failed: (0x1A) Security Violation", "\r"),  # the error box's OK
        ("Press any key to perform MOK management", " "),  # within 10 s, or shim gives up
        ("Enroll hash from disk", DOWN),  # Continue boot / Enroll key from disk / Enroll hash from disk
        ("Enroll hash from disk", "\r"),  # the menu drawn again, "Enroll key from disk" chosen
        ("APPLIANCE", "\r"),  # the stick's volume, by its label
        ("ENROLL_THIS_KEY_IN_MOKMANAGER.cer", DOWN),  # EFI/ first, then our certificate
        ("ENROLL_THIS_KEY_IN_MOKMANAGER.cer", "\r"),
        ("[Enroll MOK]", "\r"),  # View key 0 / Continue: view it first
        ("[Subject] CN=appliance Secure Boot signing key", "\r"),  # check it, back
        ("Continue", DOWN),
        ("Continue", "\r"),
        ("Enroll the key(s)?", DOWN),  # No / Yes
        ("Yes", "\r"),
        ("Perform MOK management", ""),
        ("Reboot", "\r"),  # Reboot / Enroll key from disk / ...
    ]
    with m:
        for shown, keys in steps:
            m.expect_screen(shown, 120)
            if keys:
                m.send(keys)
        m.expect(r"EFI stub: UEFI Secure Boot is enabled", 180)  # shim now trusts the UKI
        m.wait_boot(timeout=120)
        m.expect(r"init: secure boot: on \(lockdown: integrity\)", 60)
        m.expect(r"demo core: ready", 60)
        m.power_cut()
    assert m.power_cycles == 1  # MokManager's reboot


# The crash-matrix test image, signed, in both layouts: every guarantee of the init must
# hold under the kernel's lockdown (signed modules load, efivarfs and pstore work).
@pytest.fixture(scope="module")
def signed_test_images(test_raw: Path, built_raw: Path, tmp_path_factory: pytest.TempPathFactory
                       ) -> dict[str, tuple[Path, signing.Key]]:
    """Laid out as make image does (systemd-boot, its entry, the UKI; shim first for ms),
    every EFI program signed with a key made for the test."""
    return signed_layouts(test_raw, built_raw, tmp_path_factory.mktemp("signed-test"))


# own: a deadlocked core, dumped by the software watchdog; ms: a segfault.
CRASHES = {
    "own": ("deadlock", r"killed by signal 6 \(SIGABRT\); the software watchdog fired: no ping for 4 s",
            r'core:   File "/usr/lib/appliance/core/__main__.py", line \d+ in lock_(first|second)_'),
    "ms": ("segv", r"killed by signal 11 \(SIGSEGV\)", r"core: Fatal Python error: Segmentation fault"),
}


@pytest.mark.parametrize("mode", ["ms", "own"])
def test_under_secure_boot_a_core_crash_and_a_kernel_panic_survive_the_reboot(
        mode: str, signed_test_images: dict[str, tuple[Path, signing.Key]], qemu_ready: None, ocr: None,
        tmp_path: Path, log_dir: Path) -> None:
    raw, key = signed_test_images[mode]
    action, ended, dump = CRASHES[mode]
    m = Machine(raw, tmp_path, name=f"secureboot-{mode}-crash-panic", secure_boot=mode, watchdog=True,
                db_cert=key.cert if mode == "own" else None, mok_cert=key.cert if mode == "ms" else None,
                log_dir=log_dir, display="VGA")
    act(m, action.encode())
    lockdown = r"init: secure boot: on \(lockdown: integrity\)"
    with m:
        m.wait_boot(timeout=180)
        m.expect(lockdown, 60)
        m.expect(rf"matrix core: action {action}", 60)
        m.expect(rf"init: core ended: {ended} at", 90)
        m.expect(r"init: rebooting at", 30)
    log = m.esp_read(layout.RUNTIME_LOG)

    token = uuid.uuid4().hex
    act(m, f"panic {token}".encode())
    with m:
        m.wait_boot(timeout=180)
        m.expect(lockdown, 60)
        m.expect(rf"init: previous boot ended: core crash \({ended}\)", 60)
        m.expect(r"init: ===== previous boot's runtime log: begin", 10)
        m.expect(rf"init: \| {dump}", 10)
        crash = m.expect(r"init: ===== previous boot's runtime log: end \(archived as /esp(\S+)\)", 10)
        m.expect(r"Kernel panic - not syncing", 90)
        m.wait_boot(timeout=180)  # panic=10: the kernel reboots by itself
        m.expect(lockdown, 60)
        # The hardware watchdog's driver, a signed module, loads under lockdown before the core starts.
        m.expect(r"init: hardware watchdog watchdog\d \(i6300ESB timer\): 15 s, petted by the init", 60)
        m.expect(r"init: previous boot ended: kernel panic \(Panic, kept by pstore\)", 60)
        m.expect(rf"init: \| kernel: [^\n]*matrix core: about to panic the kernel, token {token}", 30)
        panic = m.expect(r"init: ===== kernel panic from the previous boot: end \(archived as /esp(\S+)\)", 10)
        m.expect(r"matrix core: ready", 60)
        # the monitor, under Secure Boot too: the panic's banner and the locked-down state
        shows(m, "panic", "THE PREVIOUS BOOT CRASHED", "cause: kernel panic (Panic, kept by pstore)",
              "kernel-panic.rec", "secure boot: on (lockdown: integrity)")
        m.power_cut()
    rec = records.decode(m.esp_read(crash.group(1)))
    assert rec.ok and rec.payload == log, rec.problem
    assert rec.meta["secure-boot"] == "on (lockdown: integrity)"
    rec = records.decode(m.esp_read(panic.group(1)))
    assert rec.ok and rec.kind == "kernel-panic" and f"token {token}".encode() in rec.payload, rec.problem
    assert rec.meta["secure-boot"] == "on (lockdown: integrity)"
