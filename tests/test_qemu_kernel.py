"""KERNEL=appliance: our own kernel, every driver built in, on a stock PC with Secure Boot on.

The crash-matrix test image built with KERNEL=appliance (build/test-kernel), signed and laid
out as make image does for a stock PC (shim, our key enrolled as a MOK). Each boot's disk
sits on another of the buses a boot disk is found on (AHCI, NVMe, xHCI, virtio-blk), and
each of the matrix's persistence cases must be kept and shown by the next boot: an
exception, SIGSEGV, a hung core through the software watchdog, a kernel panic through
pstore, a hung machine through the hardware watchdog, armed before the core starts.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from appliance.builder import signing
from appliance.esp import layout, records
from appliance.harness.machine import Machine
from tests.helpers import act, shows, signed_layouts

pytestmark = pytest.mark.qemu

LOCKDOWN = r"init: secure boot: on \(lockdown: integrity\)"
NO_MODULES = r"init: kernel modules: none: every driver is built into this kernel"
DOG = r"init: hardware watchdog (watchdog\d) \(i6300ESB timer\): 15 s, petted by the init"
CRASHED = "init: the appliance encountered an uncorrectable error and must be restarted"


@pytest.fixture(scope="module")
def stock_pc(test_kernel_raw: Path, built_raw: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, signing.Key]:
    return signed_layouts(test_kernel_raw, built_raw, tmp_path_factory.mktemp("kernel-signed"))["ms"]


class Boots:
    """One stock PC whose disk moves from bus to bus between boots."""

    def __init__(self, stock_pc: tuple[Path, signing.Key], tmp_path: Path, log_dir: Path, name: str) -> None:
        self.image, self.key = stock_pc
        self.tmp_path, self.log_dir, self.name = tmp_path, log_dir, name
        self.m: Machine | None = None

    def on(self, interface: str, action: str, display: str = "") -> Machine:
        """The machine with its disk behind ``interface``, told to do ``action`` at its next boot."""
        m = Machine(self.image, self.tmp_path, name=f"kernel-{self.name}-{interface}", interface=interface,
                    resume=self.m is not None, secure_boot="ms", mok_cert=self.key.cert, watchdog=True,
                    warm_reset=True, log_dir=self.log_dir, display=display)
        act(m, action.encode())
        self.m = m
        return m


def booted(m: Machine, device: str, previous: str | None, *shown: str) -> list[re.Match[str]]:
    """Our kernel under Secure Boot: locked down, no module to load, the ESP behind ``device``,
    the hardware watchdog armed, the previous boot's end said and ``shown`` (lines of what it
    left, in order), all before the core starts."""
    m.expect(r"EFI stub: UEFI Secure Boot is enabled", 180)
    m.wait_boot(timeout=120)
    m.expect(NO_MODULES, 30)
    m.expect(LOCKDOWN, 30)
    m.expect(rf"init: ESP mounted: {device}", 60)
    m.expect(DOG, 30)
    if previous is not None:
        m.expect(rf"init: previous boot ended: {previous}", 30)
    found = [m.expect(line, 30) for line in shown]
    m.expect(r"init: core started: pid \d+", 60)
    return found


def crashes(m: Machine, action: str, ended: str) -> None:
    m.expect(rf"matrix core: action {re.escape(action)}", 60)
    m.expect(rf"init: core ended: {ended} at", 90)
    m.expect(CRASHED, 10)
    m.expect(r"init: rebooting at", 30)


def test_our_kernel_keeps_an_exception_a_segfault_and_a_hung_core_on_ahci_and_nvme(
        stock_pc: tuple[Path, signing.Key], qemu_ready: None, tmp_path: Path, log_dir: Path) -> None:
    boots = Boots(stock_pc, tmp_path, log_dir, "crashes")
    with boots.on("ahci", "raise") as m:
        booted(m, r"/dev/sd[a-z]1 ", None)
        crashes(m, "raise", r"exited with status 1")
    with boots.on("nvme", "segv") as m:
        booted(m, r"/dev/nvme0n1p1 ", r"core crash \(exited with status 1\)",
               r"init: \| core: RuntimeError: matrix core: raised on purpose in the main thread")
        crashes(m, "segv", r"killed by signal 11 \(SIGSEGV\)")
    deadlock = r"killed by signal 6 \(SIGABRT\); the software watchdog fired: no ping for 4 s"
    with boots.on("ahci", "deadlock") as m:
        booted(m, r"/dev/sd[a-z]1 ", r"core crash \(killed by signal 11 \(SIGSEGV\)\)",
               r"init: \| core: Fatal Python error: Segmentation fault")
        crashes(m, "deadlock", deadlock)
        booted(m, r"/dev/sd[a-z]1 ", rf"core crash \({deadlock}\)",
               r"init: \| core:   File \"/usr/lib/appliance/core/__main__.py\", line \d+ in lock_(first|second)_")
        m.expect(r"matrix core: ready", 60)
        m.power_cut()
    newest = sorted(m.esp_list(layout.HISTORY_DIR))[-1]
    rec = records.decode(m.esp_read(f"{layout.HISTORY_DIR}/{newest}"))
    assert rec.ok and b"in lock_first_then_second" in rec.payload, (newest, rec.problem)
    assert rec.meta["secure-boot"] == "on (lockdown: integrity)"


def test_our_kernel_keeps_a_panic_and_a_hung_machine_on_xhci_and_virtio_blk(
        stock_pc: tuple[Path, signing.Key], qemu_ready: None, ocr: None, tmp_path: Path, log_dir: Path) -> None:
    boots = Boots(stock_pc, tmp_path, log_dir, "panic-hang")
    token = uuid.uuid4().hex
    with boots.on("usb", f"panic {token}") as m:
        booted(m, r"/dev/sd[a-z]1 ", None)
        m.expect(rf"matrix core: action panic {token}", 60)
        m.expect(r"Kernel panic - not syncing", 90)
        _, panic = booted(m, r"/dev/sd[a-z]1 ", r"kernel panic \(Panic, kept by pstore\)",  # panic=10: it reboots
                          rf"init: \| kernel: [^\n]*matrix core: about to panic the kernel, token {token}",
                          r"init: ===== kernel panic from the previous boot: end \(archived as /esp(\S+)\)")
        m.power_cut()
    rec = records.decode(m.esp_read(panic.group(1)))
    assert rec.ok and rec.kind == "kernel-panic" and f"token {token}".encode() in rec.payload, rec.problem
    assert rec.meta["secure-boot"] == "on (lockdown: integrity)"
    with boots.on("virtio", "hang", display="VGA") as m:
        # The core takes the only CPU at once: the watchdog, armed before it started, resets the machine.
        booted(m, r"/dev/vda1 ", None)
        m.expect(r"matrix core: hanging the machine", 60)
        booted(m, r"/dev/vda1 ", r"watchdog reset \(watchdog\d: i6300ESB timer\): the machine hung")
        m.expect(r"matrix core: ready", 60)
        # The monitor, on the firmware's framebuffer through simpledrm: the banner and the state.
        shows(m, "kernel-hang", "matrix: appliance", "cause: watchdog reset", "secure boot: on (lockdown: integrity)",
              "core started: pid")
        m.power_cut()
    newest = sorted(m.esp_list(layout.HISTORY_DIR))[-1]
    assert newest.endswith("-reset.rec"), newest
