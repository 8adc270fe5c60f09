"""The crashes user space cannot write down itself: a kernel panic, a hung core, a hung
init. Each boots the test image, crashes it, and checks what the next boot says."""

import uuid

import pytest

from appliance.esp import layout, records
from tests.helpers import MatrixMachine, act

pytestmark = pytest.mark.qemu

READY = r"matrix core: ready"


def test_kernel_panic_survives_in_pstore(matrix: MatrixMachine) -> None:
    token = uuid.uuid4().hex
    m = matrix("panic-pstore")
    act(m, f"panic {token}".encode())
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"Kernel panic - not syncing", 60)
        m.wait_boot(timeout=120)  # panic=10: the kernel reboots by itself; OVMF's variables persist
        m.expect(r"init: previous boot ended: kernel panic \(Panic, kept by pstore\)", 60)
        m.expect(r"init: ===== kernel panic from the previous boot \(pstore\): begin", 10)
        m.expect(rf"init: \| kernel: .*matrix core: about to panic the kernel, token {token}", 10)
        m.expect(r"init: \| kernel: .*Kernel panic - not syncing: sysrq triggered crash", 10)
        end = m.expect(r"init: ===== kernel panic from the previous boot: end \(archived as /esp(\S+)\)", 10)
        m.expect(READY, 60)
        m.power_cut()
    rec = records.decode(m.esp_read(end.group(1)))
    assert rec.ok and rec.kind == "kernel-panic", rec.problem
    assert f"token {token}".encode() in rec.payload
    assert rec.meta["boot-ended"] == "kernel panic (Panic, kept by pstore)"
    # Erased from pstore once archived: the next boot (after a power cut) shows no panic.
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: previous boot ended: power loss or reset: nothing was recorded", 60)
        m.expect(READY, 60)
        m.power_cut()
    assert "kernel panic from the previous boot" not in m.log_path.read_text(errors="replace").split(
        "previous boot ended: power loss")[1]
    kinds = [name.split("-", 1)[1] for name in m.esp_list(layout.HISTORY_DIR)]
    assert kinds == ["kernel-panic.rec", "reset.rec"], kinds


def test_a_deadlocked_core_is_dumped_by_the_software_watchdog(matrix: MatrixMachine) -> None:
    m = matrix("watchdog-deadlock")
    act(m, b"deadlock")
    ended = r"killed by signal 6 \(SIGABRT\); the software watchdog fired: no ping for 4 s"
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: software watchdog: timeout set to 4 s by the core", 60)
        m.expect(r"matrix core: deadlocked", 30)
        m.expect(r"init: software watchdog: no ping from the core for 4 s: dumping its threads", 30)
        m.expect(rf"init: core ended: {ended} at", 30)
        m.wait_boot(timeout=120)
        m.expect(rf"init: previous boot ended: core crash \({ended}\)", 60)
        m.expect(r"init: ===== previous boot's runtime log: begin", 10)
        # Both deadlocked threads, where they wait.
        m.expect(r"init: \| core:   File \"/usr/lib/appliance/core/__main__.py\", line \d+ in lock_(first|second)_", 10)
        m.expect(r"init: \| core:   File \"/usr/lib/appliance/core/__main__.py\", line \d+ in lock_(first|second)_", 10)
        m.expect(READY, 60)
        m.power_cut()
    console = m.log_path.read_text(errors="replace")
    assert "in lock_first_then_second" in console and "in lock_second_then_first" in console


def test_a_core_hanging_the_machine_at_once_and_a_hung_init_are_reset_by_the_hardware_watchdog(
        matrix: MatrixMachine) -> None:
    # A warm reset, as the watchdog gives it: its boot status must survive into the next boot.
    m = matrix("watchdog-init-hang", watchdog=True, warm_reset=True)
    act(m, b"hang")  # the first boot's core takes the only CPU as it starts
    m.esp_write(layout.TEST_HANG_INIT, b"")  # the second boot's init hangs 2 s after its core started
    dog_line = r"init: hardware watchdog (watchdog\d) \(i6300ESB timer\): 15 s, petted by the init"
    with m:
        m.wait_boot(timeout=120)
        # Armed on every boot before the core starts, not only on an update's trial.
        dog = m.expect(dog_line, 60)
        m.expect(r"init: core started: pid", 30)
        m.expect(r"matrix core: hanging the machine", 60)
        for _ in range(2):
            m.wait_boot(timeout=120)  # nothing pets the watchdog: the machine resets
            m.expect(rf"{dog_line}; it reset the machine last time", 60)
            m.expect(rf"init: previous boot ended: watchdog reset \({dog.group(1)}: i6300ESB timer\): the machine "
                     "hung", 30)
            m.expect(r"init: core started: pid", 30)
            if m.boots == 2:
                m.expect(r"init: TEST: hanging the init on purpose", 30)
        m.expect(READY, 60)
        m.power_cut()
    assert m.boots == 3
    kinds = [name.split("-", 1)[1] for name in m.esp_list(layout.HISTORY_DIR)]
    assert kinds == ["reset.rec", "reset.rec"], kinds
