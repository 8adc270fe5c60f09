"""The monitor, as a person at the machine sees it: QEMU with a display device beside the
serial console, its picture taken through QMP and read by OCR (tesseract). One machine
and one story for the screen, one for the debug image's keyboard."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from appliance.esp import layout
from appliance.harness.machine import Machine
from tests.helpers import MatrixMachine, act, shows

pytestmark = pytest.mark.qemu


def test_the_screen_shows_the_boot_the_kiosk_and_the_last_crash(matrix: MatrixMachine, ocr: None) -> None:
    m = matrix("screen", display="VGA")
    with m:
        m.wait_boot(timeout=120)
        version = m.expect(r"init: image (\S+) \(", 10).group(1)
        m.expect(r"init: screen: fb0: EFI VGA, \d+x\d+; \d+x\d+ characters on /dev/tty1", 30)
        m.expect(r"matrix core: ready", 120)
        # a clean boot: the machine and its version, its state, its story up to the core
        shows(m, "clean", f"matrix: appliance {version}", "secure boot: off", "crash records: kept on the ESP",
              "core started: pid", absent=("PREVIOUS BOOT",))
        m.power_cut()
    act(m, b"kiosk 12\n")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: previous boot ended: power loss or reset", 60)
        # The core's line and the init's come on two pipes: in either order. "healthy", an init
        # line after the take, must not be drawn.
        took = (r"init: screen: the core draws on it now", r"matrix core: kiosk on /dev/tty1",
                r"init: the core says it is healthy")
        seen = {m.expect("|".join(took), 120).group(0) for _ in took}
        assert seen == set(took), seen
        shows(m, "kiosk", "KIOSK USER INTERFACE 4711", "TOUCH TO START",
              absent=("healthy", "the core draws on it", "matrix: appliance"))
        m.expect(r"init: core ended: exited with status 1", 60)
        m.wait_boot(timeout=120)  # the kiosk's crash rebooted the machine
        m.expect(r"init: ===== previous boot's runtime log: end \(archived as /esp/appliance/history/"
                 r"(\d+-runtime-log\.rec)\)", 60)
        m.expect(r"matrix core: ready", 120)
        text = shows(m, "crash", "THE PREVIOUS BOOT CRASHED", "cause: core crash (exited with status 1)",
                     "its last lines:", "RuntimeError: matrix core: the kiosk crashed on purpose",
                     "full record:", "runtime-log.rec", "make dumps", "core started: pid")
        assert not re.search(r"^\|", text, re.M)  # the dump's own lines are the serial console's
        m.power_cut()
    # another display device: the firmware's framebuffer is all the init draws on
    m.spec = dataclasses.replace(m.spec, display="bochs-display")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: screen: fb0: EFI VGA", 30)
        m.expect(r"matrix core: ready", 120)
        shows(m, "bochs", "matrix: appliance", "THE PREVIOUS BOOT DID NOT END CLEANLY",
              "cause: power loss or reset", "core started: pid")
        m.power_cut()


def test_the_debug_shell_and_the_hold_switch_work_from_the_keyboard(test_debug_raw: Path, qemu_ready: None,
                                                                    ocr: None, tmp_path: Path,
                                                                    log_dir: Path) -> None:
    # a USB keyboard: its drivers come after the xHCI's (a deferred one: the disk is virtio),
    # as the kernel finds it; the keys typed below reach the shell only through them
    m = Machine(test_debug_raw, tmp_path, name="screen-debug", log_dir=log_dir, display="VGA", keyboard="usb")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: debug profile: root shell on /dev/tty2 \(pid \d+\)", 60)
        m.expect(r"matrix core: ready", 120)
        shows(m, "debug-banner", "DEBUG IMAGE", "tty2 (Alt+F2")
        m.keys("alt-f2")  # the shell's console, as a person at the keyboard would
        m.type_at_screen("echo $((6*7)) is the answer\n")
        m.watch(2)
        shows(m, "debug-shell", "42 is the answer")  # the line typed has no 42: the shell ran it
        # usbhid may come with the deferred wave (the xHCI's scan found the device) or later;
        # hid-generic binds the HID device that usbhid's probe makes: always a new device
        out = m.output_since_start()
        lines = re.findall(r"init: kernel modules(?: for new devices)?: ([^\r\n]*)", out)
        assert {"usbhid", "hid_generic"} <= set(re.findall(r"\w+", " ".join(lines))), lines
        assert re.search(r"init: kernel modules for new devices: [^\r\n]*\bhid_generic\b", out), out[-3000:]
        # the hold switch, made at the keyboard; then a shutdown asked for: the init holds
        m.type_at_screen(f"busybox touch {layout.MOUNT}{layout.HOLD} && kill -TERM 1\n")
        m.expect(rf"init: holding, not rebooting \(the file {layout.MOUNT}{layout.HOLD}\)", 60)
        m.keys("alt-f1")
        m.watch(2)
        shows(m, "held", "holding, not rebooting")
        m.power_cut()
    assert m.esp_read(layout.HOLD) == b""
