"""Updates in the field: staged from a host or from the core, tried, committed or rolled
back by the machine itself, with the crash history kept throughout."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from appliance.esp import layout, records, uki
from appliance.harness.machine import Machine
from appliance.media import dumps, update
from tests.helpers import MatrixMachine, act

pytestmark = pytest.mark.qemu

READY = r"matrix core: ready"


def version(efi: Path) -> str:
    return uki.read_path(str(efi)).identity.version


def history(m: Machine) -> list[records.Record]:
    return [records.decode(m.esp_read(f"{layout.HISTORY_DIR}/{n}")) for n in m.esp_list(layout.HISTORY_DIR)]


def test_an_update_staged_from_a_host_is_tried_committed_and_kept(matrix: MatrixMachine,
        test_raw: Path, test_v2_efi: Path) -> None:
    v1, v2 = version(test_raw.parent / "appliance.efi"), version(test_v2_efi)
    m = matrix("update-from-host")
    act(m, b"raise")  # a crash under v1: its record must survive the update
    with m:
        m.wait_boot(timeout=120)
        m.expect(rf"init: boot entry appliance-000001\.conf: image {re.escape(v1)}, committed", 30)
        m.expect(r"init: rebooting at", 60)
    out = io.StringIO()
    assert update.update(str(m.disk), str(test_v2_efi), out=out) == 0, out.getvalue()
    assert f"the next boot tries {v2}" in out.getvalue()
    act(m, b"healthy")  # v2's core says it is healthy once it runs
    with m:
        m.wait_boot(timeout=120)
        m.expect(rf"init: image {re.escape(v2)} ", 10)
        m.expect(r"init: previous boot ended: core crash \(exited with status 1\)", 30)
        m.expect(rf"init: trying update {re.escape(v2)}: try 1 of 3", 30)
        m.expect(r"init: the core says it is healthy", 60)
        m.expect(rf"init: update {re.escape(v2)} committed: it is the default image from now on", 10)
        m.power_cut()
    for _ in range(2):  # still v2, committed, on the next boots
        with m:
            m.wait_boot(timeout=120)
            m.expect(rf"init: boot entry appliance-000002\.conf: image {re.escape(v2)}, committed", 30)
            m.expect(READY, 60)
            m.power_cut()
    assert m.esp_list("/loader/entries") == ["appliance-000001.conf", "appliance-000002.conf"]  # v1 kept as previous
    kept = history(m)
    crash = [r for r in kept if r.kind == "runtime-log"]
    assert len(crash) == 1 and crash[0].meta["image"].startswith(v1 + " (")
    assert b"matrix core: raised on purpose" in crash[0].payload
    log = m.esp_read(layout.UPDATE_LOG).decode()
    assert f"staged {v2} " in log and "from a host" in log and f"committed {v2} (generation 2)" in log


def test_an_update_that_crashes_is_rolled_back_by_the_machine_itself(matrix: MatrixMachine,
        test_raw: Path, test_v2_efi: Path) -> None:
    v1, v2 = version(test_raw.parent / "appliance.efi"), version(test_v2_efi)
    m = matrix("update-rollback")
    m.esp_write(layout.TEST_UPDATE, test_v2_efi.read_bytes())  # as if the core had fetched it
    act(m, b"stage")
    m.esp_write(layout.TEST_VERSION_ACTION, f"{v2} raise".encode())  # v2's core crashes at once
    with m:
        m.wait_boot(timeout=120)
        m.expect(rf"matrix core: staged {re.escape(v2)} as generation 2 \(appliance-000002\+3\.conf\)", 60)
        m.expect(r"init: rebooting at", 30)
        for n in (1, 2, 3):  # each try crashes; nobody touches the machine
            m.wait_boot(timeout=120)
            m.expect(rf"init: trying update {re.escape(v2)}: try {n} of 3", 60)
            m.expect(r"RuntimeError: matrix core: raised on purpose in the main thread", 60)  # live, not a dump
            m.expect(r"init: rebooting at", 60)
        m.wait_boot(timeout=120)
        m.expect(rf"init: image {re.escape(v1)} ", 10)
        line = m.expect(rf"init: update to {re.escape(v2)} rolled back after 3 failed boots: ([^\r\n]*)\r*\n", 180)
        m.expect(READY, 60)
        m.power_cut()
    assert line.group(1).count("core crash (exited with status 1)") == 3, line.group(1)
    assert m.esp_list("/loader/entries") == ["appliance-000001.conf"]
    crashes = [r for r in history(m) if r.meta.get("image", "").startswith(v2 + " (")]
    assert len(crashes) >= 3 and all(b"raised on purpose" in r.payload for r in crashes)
    log = m.esp_read(layout.UPDATE_LOG).decode()
    assert "from the core" in log and f"update to {v2} rolled back after 3 failed boots" in log
    out = io.StringIO()  # make dumps: the records marked with the version that crashed, and the update log
    dumps.run(str(m.disk), out=out)
    listing = out.getvalue()
    assert listing.count(f" {v2} ") >= 3 and "boot entries (/loader/entries): appliance-000001.conf" in listing
    assert re.search(rf"^  \S+ update to {re.escape(v2)} rolled back after 3 failed boots", listing, re.M), listing


@pytest.mark.parametrize("action, cause, end", [
    ("panic", r"kernel panic \(Panic, kept by pstore\)", r"Kernel panic - not syncing"),
    # At once, before the drivers' usual time: the init arms the watchdog before a trial's core.
    ("hang", r"watchdog reset \(watchdog0: i6300ESB timer\): the machine hung", r"matrix core: hanging the machine"),
])
def test_an_update_that_panics_or_hangs_is_rolled_back_too(matrix: MatrixMachine,
        action: str, cause: str, end: str, test_raw: Path, test_v2_efi: Path) -> None:
    v1, v2 = version(test_raw.parent / "appliance.efi"), version(test_v2_efi)
    # A hang is ended by the hardware watchdog's reset, a warm one (its boot status survives).
    m = matrix(f"update-rollback-{action}", watchdog=action == "hang",
                warm_reset=action == "hang")
    m.esp_write(layout.TEST_VERSION_ACTION, f"{v2} {action}{' now' if action == 'panic' else ''}".encode())
    out = io.StringIO()
    assert update.update(str(m.disk), str(test_v2_efi), out=out) == 0, out.getvalue()
    with m:
        for n in (1, 2, 3):
            m.wait_boot(timeout=180)
            m.expect(rf"init: trying update {re.escape(v2)}: try {n} of 3", 60)
            m.expect(end, 90)
        m.wait_boot(timeout=180)
        m.expect(rf"init: image {re.escape(v1)} ", 10)
        line = m.expect(rf"init: update to {re.escape(v2)} rolled back after 3 failed boots: ([^\r\n]*)\r*\n", 180)
        m.expect(READY, 60)
        m.power_cut()
    assert len(re.findall(cause, line.group(1))) == 3, line.group(1)


def test_power_lost_during_each_try_rolls_the_update_back(matrix: MatrixMachine,
        test_raw: Path, test_v2_efi: Path) -> None:
    """The power goes while v2 is on trial, three times: each is a failed try, said as such."""
    v1, v2 = version(test_raw.parent / "appliance.efi"), version(test_v2_efi)
    m = matrix("update-rollback-power")
    out = io.StringIO()
    assert update.update(str(m.disk), str(test_v2_efi), out=out) == 0, out.getvalue()
    for n in (1, 2, 3):
        with m:
            m.wait_boot(timeout=120)
            m.expect(rf"init: trying update {re.escape(v2)}: try {n} of 3", 60)
            m.expect(READY, 60)
            m.power_cut()
    with m:
        m.wait_boot(timeout=120)
        m.expect(rf"init: image {re.escape(v1)} ", 10)
        line = m.expect(rf"init: update to {re.escape(v2)} rolled back after 3 failed boots: ([^\r\n]*)\r*\n", 60)
        m.expect(READY, 60)
        m.power_cut()
    # The first try's end is said by the second boot (v2's own), the third's by v1's boot.
    assert line.group(1).count("power loss") == 3, line.group(1)


@pytest.mark.parametrize("step", ["writing the image", "writing its entry", "renaming its entry"])
def test_a_power_cut_while_the_core_stages_leaves_a_machine_that_boots_a_good_image(
        step: str, test_raw: Path, test_v2_efi: Path, qemu_ready: None, tmp_path: Path, log_dir: Path) -> None:
    """The power goes as the core begins a step of staging; the next boot runs v1, or v2
    on trial once its entry was whole, and a new staging then succeeds."""
    v1, v2 = version(test_raw.parent / "appliance.efi"), version(test_v2_efi)
    m = Machine(test_raw, tmp_path, name=f"update-cut-{step.split()[0]}", log_dir=log_dir)
    m.esp_write(layout.TEST_UPDATE, test_v2_efi.read_bytes())
    act(m, b"stage")
    with m:
        m.wait_boot(timeout=120)
        m.expect(rf"matrix core: staging: {step}", 60)
        m.power_cut()
    with m:
        m.wait_boot(timeout=120)
        m.expect(rf"init: (boot entry appliance-000001\.conf: image {re.escape(v1)}, committed|"
                 rf"trying update {re.escape(v2)}: try 1 of 3)", 60)
        m.expect(READY, 60)
        m.power_cut()
    assert "appliance-000001.conf" in m.esp_list("/loader/entries")  # the running image was never touched
    assert m.esp_read(f"/EFI/appliance/000001-{v1}.efi") == (test_raw.parent / "appliance.efi").read_bytes()
    out = io.StringIO()
    assert update.update(str(m.disk), str(test_v2_efi), out=out) == 0, out.getvalue()  # leftovers cleaned
    assert [e for e in m.esp_list("/loader/entries") if not e.endswith(".conf")] == []
