"""Boot the real images in QEMU/OVMF and watch the serial console."""

import re
from pathlib import Path

import pytest

from appliance.esp import layout, records, uki
from appliance.harness.machine import Machine
from tests.helpers import MatrixMachine, act

pytestmark = pytest.mark.qemu

CORE_STARTED = re.compile(r"init: core started: pid (\d+) at ([0-9.]+) s since boot")


def test_demo_image_boots_to_its_core(built_raw: Path, built_efi: Path, qemu_ready: None, tmp_path: Path,
                                      log_dir: Path) -> None:
    image = uki.read_path(str(built_efi)).identity  # what the build wrote into the UKI's .osrel
    assert image.version and len(image.build_id) == 12
    m = Machine(built_raw, tmp_path, name="demo-boot", log_dir=log_dir)
    with m:
        init_up = m.wait_boot(timeout=120)
        m.expect(rf"init: image {re.escape(image.describe())}\s", 10)
        m.expect(r"init: secure boot: off\s", 30)
        m.expect(r"init: ESP mounted: /dev/vda1 \(partition [0-9a-f-]+\) at /esp", 30)
        started = m.expect(CORE_STARTED, 30)
        m.expect(r"demo core: ready", 30)
    core_up = float(started.group(2))
    print(f"init start -> core started: {core_up - init_up:.3f} s (guest uptime {init_up:.3f} -> {core_up:.3f})")


def test_a_crash_survives_the_reboot(matrix: MatrixMachine, test_raw: Path) -> None:
    m = matrix("crash-reboot")
    act(m, b"raise\n")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"matrix core: action raise", 60)
        m.expect(r"init: core ended: exited with status 1 at", 30)
        m.expect(r"init: the appliance encountered an uncorrectable error and must be restarted", 10)
        m.expect(r"init: rebooting", 30)
        m.wait_boot(timeout=120)  # the machine rebooted by itself
        m.expect(r"init: ===== previous boot's runtime log: begin \(\d+ bytes; core ended: exited with status 1\)", 60)
        m.expect(r"init: \| core: uncaught exception in the main thread:", 10)
        m.expect(r"init: \| core:     raise RuntimeError\(\"matrix core: raised on purpose in the main thread\"\)", 10)
        m.expect(r"init: \| init: core ended: exited with status 1", 10)
        m.expect(r"init: ===== previous boot's runtime log: end "
                 r"\(archived as /esp/appliance/history/(\d+)-runtime-log\.rec\)", 10)
        m.expect(r"matrix core: ready", 60)
        m.power_cut()
    assert m.boots == 2
    names = m.esp_list(layout.HISTORY_DIR)
    assert names == ["000001-runtime-log.rec"]
    rec = records.decode(m.esp_read(f"{layout.HISTORY_DIR}/000001-runtime-log.rec"))
    assert rec.ok, rec.problem
    assert rec.meta["ended"] == "exited with status 1"
    assert rec.meta["secure-boot"] == "off"  # the crashed boot's, from its state file
    assert rec.meta["image"] == uki.read_path(str(test_raw.parent / "appliance.efi")).identity.describe()
    assert b"core: RuntimeError: matrix core: raised on purpose in the main thread" in rec.payload
    assert b'core:     raise RuntimeError("matrix core: raised on purpose in the main thread")' in rec.payload
