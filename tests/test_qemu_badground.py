"""Bad ground: each case boots, says what is wrong, and loses nothing it could keep."""

import io
import os
import re
import uuid
from pathlib import Path

import pytest

from appliance.builder import disk
from appliance.esp import gpt, layout, records
from appliance.harness.machine import Machine
from appliance.harness.qemu import Drive
from appliance.media import dumps, espfs
from tests.helpers import MatrixMachine, act, always

pytestmark = pytest.mark.qemu

READY = r"matrix core: ready"
HISTORY_RECORDS = 4  # the test image's bound (make test-image)


def crash_and_find_it_archived(m: Machine, esp_device: str) -> None:
    """The core raises; the ESP at ``esp_device`` (a regex) gets the dump, the next boot
    prints and archives it, and exactly one record is on that ESP afterwards."""
    act(m, b"raise")
    with m:
        for boot in (1, 2):
            m.wait_boot(timeout=120)
            m.expect(rf"init: ESP mounted: {esp_device}", 60)
            if boot == 1:
                m.expect(r"init: core ended: exited with status 1 at", 60)
        m.expect(r"init: \| core: RuntimeError: matrix core: raised on purpose in the main thread", 60)
        m.expect(r"init: ===== previous boot's runtime log: end \(archived as", 10)
        m.expect(READY, 60)
        m.power_cut()
    assert len(m.esp_list(layout.HISTORY_DIR)) == 1


def test_garbage_previous_log_of_50_mb(matrix: MatrixMachine) -> None:
    m = matrix("bad-garbage-log")
    m.esp_write(layout.RUNTIME_LOG, os.urandom(50 << 20))
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: ===== previous boot's runtime log: begin \(52428800 bytes; core ended: not recorded", 60)
        m.expect(r"init: \| \[\.\.\. \d+ earlier bytes not shown here; the archived record has them \.\.\.\]", 120)
        end = m.expect(r"init: ===== previous boot's runtime log: end \(archived as /esp(/appliance/history/\S+)\)",
                       120)
        m.expect(READY, 60)
        m.power_cut()
    rec = records.decode(m.esp_read(end.group(1)))
    assert rec.ok and len(rec.payload) < (1 << 20) + 4096  # bounded by the log cap, not 50 MB
    assert b"bytes of the previous log skipped: it is larger than the cap" in rec.payload
    assert m.esp_read(layout.RUNTIME_LOG) == b""  # this boot's fresh log: the garbage is gone


def test_full_esp(matrix: MatrixMachine) -> None:
    m = matrix("bad-full-esp")
    act(m, b"raise")
    m.esp_write("/filler.bin", b"\0" * m.esp_free())
    assert m.esp_free() == 0
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: persistence (OFF|FAILED): .*No space left on device", 60)
        m.expect(r"matrix core: action raise", 60)
        m.expect(r"init: core ended: exited with status 1 at", 60)
        m.expect(r"init: rebooting at", 60)
        m.wait_boot(timeout=120)  # and it comes back
        m.expect(READY, 60)
        m.power_cut()


def test_read_only_boot_disk(matrix: MatrixMachine) -> None:
    m = matrix("bad-read-only", readonly=True)
    old = b"core: an old crash\ninit: core ended: exited with status 5\n"
    m.esp_write(layout.RUNTIME_LOG, old)
    m.esp_write(layout.LAST_BOOT, b"state = ended\ncategory = core\ncause = exited with status 5\n")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: read-write mount refused .*; mounted read-only", 60)
        m.expect(r"init: persistence OFF: the ESP is read-only", 10)
        m.expect(r"init: previous boot ended: core crash \(exited with status 5\)", 30)
        m.expect(r"init: ===== previous boot's runtime log: begin \(\d+ bytes; core ended: exited with status 5\)", 30)
        m.expect(r"init: \| core: an old crash", 10)
        m.expect(r"init: ===== previous boot's runtime log: end \(not archived: the ESP is read-only", 10)
        m.expect(READY, 60)
        m.power_cut()
    assert m.esp_read(layout.RUNTIME_LOG) == old  # shown, and still there


def test_records_go_only_to_the_esp_booted_from(test_raw: Path, qemu_ready: None, tmp_path: Path,
                                                log_dir: Path) -> None:
    """The laptop case: another disk with an ESP (here even one named like ours) that the
    firmware and the kernel see first: it becomes vda, the image vdb."""
    other = tmp_path / "other.raw"
    fake = tmp_path / "fake.efi"
    fake.write_bytes(b"MZ not bootable")
    disk.make_disk(fake, other, free=8 * disk.MIB, part_id=uuid.uuid4())
    before = other.read_bytes()
    m = Machine(test_raw, tmp_path / "m", name="bad-second-disk", log_dir=log_dir,
                extra_drives=(Drive(str(other)),), extra_drives_first=True)
    ours = next(p for p in gpt.read_partitions(str(m.disk)) if p.is_esp).unique_guid
    # The kernel names the two virtio disks in the order their probes finish: either may be
    # vda. What counts is the partition, and that not a byte reaches the other disk.
    crash_and_find_it_archived(m, rf"/dev/vd[ab]1 \(partition {ours}\)")
    assert other.read_bytes() == before  # not a byte written to the other disk


def test_crash_loop_backs_off_and_history_stays_bounded(matrix: MatrixMachine) -> None:
    m = matrix("bad-crash-loop")
    always(m, b"raise")
    free_before = m.esp_free()
    with m:
        for failure in range(1, 7):
            m.wait_boot(timeout=120)
            m.expect(r"init: core ended: exited with status 1 at", 60)
            wait = min(2 ** (failure - 1), 300)
            m.expect(rf"init: crash loop back-off: waiting {wait} s before rebooting \(failure {failure} in a row\)",
                     30)
            m.expect(r"init: rebooting at", 30 + wait)
        m.power_cut()
    history = m.esp_list(layout.HISTORY_DIR)
    assert len(history) == HISTORY_RECORDS, history
    assert m.esp_read(layout.BACKOFF) == b"failures = 6\n"
    assert free_before - m.esp_free() < 2 << 20  # bounded: far from the floor
    # `make dumps` reads what the crash loop left, off the disk image, without booting it.
    out = io.StringIO()
    assert dumps.run(str(m.disk), out=out) == 0, out.getvalue()
    listing = out.getvalue()
    assert f"crash history (/appliance/history): {HISTORY_RECORDS} records" in listing, listing
    assert listing.count("runtime-log") == HISTORY_RECORDS and listing.count("exited with status 1") == HISTORY_RECORDS
    assert "crash-loop counter: 6 failure(s) in a row" in listing
    out = io.StringIO()
    assert dumps.run(str(m.disk), show_what="all", out=out) == 0
    raised = "core: RuntimeError: matrix core: raised on purpose in the main thread"
    assert out.getvalue().count(raised) == HISTORY_RECORDS, out.getvalue()


def test_usb_stick(matrix: MatrixMachine) -> None:
    m = matrix("bad-usb-stick", interface="usb")
    crash_and_find_it_archived(m, r"/dev/sd[a-z]1 ")


FLOOD_LINE = re.compile(rb"core: matrix core: flood line (\d{8})")

def check_flood_log(data: bytes) -> int:
    """Intact up to the cut: consecutive flood lines (numbering restarts after the cap's
    marker), nothing else but the core's own lines, at most the last line cut short.
    Returns the number of whole flood lines."""
    assert b"\0" not in data, "NUL bytes in the runtime log: data lost at the power cut"
    *whole, partial = data.split(b"\n")
    assert partial == b"" or b"core: matrix core: flood line 00000000".startswith(partial[:30]), partial
    previous, count = None, 0
    for line in whole:
        if line.startswith(b"init: [... ") or line == b"":
            previous = None  # the cap's marker: the middle of the log was cut here
            continue
        m = FLOOD_LINE.fullmatch(line)
        if m is None:
            assert line in (b"core: matrix core: action flood",), line
            continue
        n = int(m.group(1))
        assert previous is None or n == previous + 1, f"line {n} follows {previous}"
        previous, count = n, count + 1
    return count


def test_power_cut_while_the_core_floods_stderr(matrix: MatrixMachine) -> None:
    repeats = int(os.environ.get("POWER_CUT_REPEATS", "5"))
    m = matrix("bad-power-cut")
    always(m, b"flood")
    for i in range(repeats):
        with m:
            m.wait_boot(timeout=120)
            m.expect(r"matrix core: flood line 00020000", 120)  # well past several flushes
            m.power_cut()
        problems = espfs.fsck_problems(m.disk)
        assert problems == [], f"cut {i + 1}: fsck.fat -n found more than the dirty flag: {problems}"
        assert check_flood_log(m.esp_read(layout.RUNTIME_LOG)) > 0, f"cut {i + 1}: nothing was kept"
