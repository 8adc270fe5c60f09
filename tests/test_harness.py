"""The QEMU command line, the firmware lookup, and proof that the harness can fail."""

import json
import os
import time
from pathlib import Path

import pytest

from appliance.harness import machine as machine_mod
from appliance.harness.qemu import Drive, Firmware, FirmwareError, MachineSpec, command, find_ovmf

FW = Firmware("/fw/CODE.fd", "/fw/VARS.fd")


def spec(**kw: object) -> MachineSpec:
    base: dict[str, object] = {"drives": (Drive("/d/disk.raw"),), "firmware": FW, "vars_path": "/w/vars.fd"}
    base.update(kw)
    return MachineSpec(**base)  # type: ignore[arg-type]


def test_command_line_basics() -> None:
    cmd = command(spec())
    joined = " ".join(cmd)
    assert cmd[0] == "qemu-system-x86_64"
    assert "-nic none" in joined and "-nodefaults" in cmd and "-serial stdio" in joined
    assert "accel=tcg" in joined and "-cpu max" in joined
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd" in cmd
    assert "if=pflash,format=raw,unit=1,file=/w/vars.fd" in cmd
    assert "virtio-rng-pci" in cmd and "virtio-blk-pci,drive=disk0,bootindex=0" in cmd
    assert "i6300esb" not in joined and "xhci" not in joined


def test_command_line_usb_readonly_second_disk_watchdog_kvm() -> None:
    cmd = " ".join(command(spec(drives=(Drive("/d/a.raw", "usb", readonly=True), Drive("/d/b.raw", "nvme")),
                                watchdog=True, accel="kvm")))
    assert "qemu-xhci,id=xhci" in cmd and "usb-storage,bus=xhci.0,drive=disk0,removable=on" in cmd
    assert "file=/d/a.raw,readonly=on" in cmd and "nvme,drive=disk1" in cmd
    assert "i6300esb" in cmd and "watchdog=reset" in cmd and "-cpu host" in cmd
    with pytest.raises(ValueError):
        command(spec(drives=(Drive("/x", "floppy"),)))
    cmd = " ".join(command(spec(drives=(Drive("/d/other.raw", bootindex=1), Drive("/d/ours.raw", bootindex=0)))))
    assert "virtio-blk-pci,drive=disk0,bootindex=1" in cmd and "virtio-blk-pci,drive=disk1,bootindex=0" in cmd


def test_command_line_every_boot_controller_and_the_older_pc() -> None:
    drives = tuple(Drive(f"/d/{i}.raw", kind) for i, kind in enumerate(("virtio-scsi", "usb-ehci", "ahci")))
    cmd = " ".join(command(spec(drives=drives, machine="pc")))
    assert "-machine pc,smm=off,accel=tcg" in cmd
    assert "virtio-scsi-pci,id=scsi" in cmd and "scsi-hd,bus=scsi.0,drive=disk0,bootindex=0" in cmd
    assert "usb-ehci,id=ehci" in cmd and "usb-storage,bus=ehci.0,drive=disk1" in cmd
    assert "-device ahci,id=ahci" in cmd and "ide-hd,drive=disk2,bus=ahci.2,bootindex=2" in cmd
    q35 = " ".join(command(spec(drives=(Drive("/d/a.raw", "ahci"),))))
    assert "ahci,id=ahci" not in q35 and "ide-hd,drive=disk0,bootindex=0" in q35  # ICH9's own AHCI


def test_command_line_usb_keyboard() -> None:
    cmd = command(spec(keyboard="usb"))
    assert cmd.count("qemu-xhci,id=xhci") == 1 and "usb-kbd,bus=xhci.0" in cmd
    both = command(spec(drives=(Drive("/d/a.raw", "usb"),), keyboard="usb"))
    assert both.count("qemu-xhci,id=xhci") == 1 and "usb-kbd,bus=xhci.0" in both  # one controller for both
    assert "usb-kbd" not in " ".join(command(spec(drives=(Drive("/d/a.raw", "usb"),))))
    with pytest.raises(ValueError, match="keyboard='ps2'"):
        command(spec(keyboard="ps2"))


def test_command_line_secure_boot() -> None:
    cmd = " ".join(command(spec(secure_boot=True)))
    assert "-machine q35,smm=on,accel=tcg" in cmd and "-global driver=cfi.pflash01,property=secure,value=on" in cmd
    assert "smm=off" in " ".join(command(spec())) and "cfi.pflash01" not in " ".join(command(spec()))


def test_command_line_blkdebug() -> None:
    cmd = command(spec(drives=(Drive("/d/a.raw", blkdebug="/w/rules.cfg"),)))
    assert "if=none,id=disk0,format=raw,file=blkdebug:/w/rules.cfg:/d/a.raw" in cmd


def test_find_ovmf_reads_descriptors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVMF_CODE", raising=False)
    code, nv = tmp_path / "CODE.fd", tmp_path / "VARS.fd"
    code.write_bytes(b"")
    nv.write_bytes(b"")

    def desc(name: str, features: list[str]) -> None:
        (tmp_path / name).write_text(json.dumps({
            "interface-types": ["uefi"], "features": features,
            "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
            "mapping": {"device": "flash", "executable": {"filename": str(code)},
                        "nvram-template": {"filename": str(nv)}}}))
    desc("40-secure.json", ["secure-boot", "requires-smm"])
    with pytest.raises(FirmwareError):
        find_ovmf((str(tmp_path),))
    with pytest.raises(FirmwareError, match="Microsoft's keys"):
        find_ovmf((str(tmp_path),), secure_boot=True)  # enforced, but no keys enrolled
    desc("60-plain.json", ["acpi-s3"])
    assert find_ovmf((str(tmp_path),)) == Firmware(str(code), str(nv))
    desc("41-enrolled.json", ["secure-boot", "requires-smm", "enrolled-keys"])
    assert find_ovmf((str(tmp_path),), secure_boot=True) == Firmware(str(code), str(nv))
    monkeypatch.setenv("OVMF_CODE", "/a")
    monkeypatch.setenv("OVMF_VARS", "/b")
    assert find_ovmf((str(tmp_path),)) == Firmware("/a", "/b")


def test_a_qemu_that_prints_nothing_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prove the harness can fail: a fake QEMU that only sleeps must time out, and the
    failure must say what was awaited and how to reproduce."""
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("OVMF_CODE", str(tmp_path / "c.fd"))
    monkeypatch.setenv("OVMF_VARS", str(tmp_path / "v.fd"))
    monkeypatch.setenv("QEMU_ACCEL", "tcg")
    monkeypatch.setenv("TIMEOUT_MULTIPLIER", "0.5")
    (tmp_path / "v.fd").write_bytes(b"")
    (tmp_path / "disk.raw").write_bytes(b"")
    m = machine_mod.Machine(tmp_path / "disk.raw", tmp_path / "work", name="fake")
    started = time.monotonic()
    with m, pytest.raises(machine_mod.HarnessTimeout) as err:
        m.wait_boot(timeout=2)
    assert 0.9 <= time.monotonic() - started < 10  # 2 s scaled by 0.5
    text = str(err.value)
    assert "timed out after 1 s" in text and "reproduce:" in text and "qemu-system-x86_64" in text
    log = m.log_path.read_text()
    assert log.startswith("### fake:") and "### qemu: qemu-system-x86_64" in log and "timeout multiplier 0.5" in log


FAKE_GUEST = """#!/bin/sh
# A guest that boots, and on its first two boots resets: QEMU under -no-reboot then exits 0.
n=$(cat "{count}" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "{count}"
echo "init: appliance init 0.1 started at $n.0 s since boot"
if [ $n -le 2 ]; then echo "reboot: Restarting system"; exit {status}; fi
echo "ready after $n boots"
exec sleep 60
"""


def fake_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int = 0,
                 warm_reset: bool = False) -> machine_mod.Machine:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text(FAKE_GUEST.format(count=tmp_path / "count", status=status))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("OVMF_CODE", str(tmp_path / "c.fd"))
    monkeypatch.setenv("OVMF_VARS", str(tmp_path / "v.fd"))
    monkeypatch.setenv("QEMU_ACCEL", "tcg")
    (tmp_path / "v.fd").write_bytes(b"")
    (tmp_path / "disk.raw").write_bytes(b"")
    return machine_mod.Machine(tmp_path / "disk.raw", tmp_path / "work", name="fake", warm_reset=warm_reset)


def test_a_guest_reset_is_a_power_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = fake_machine(tmp_path, monkeypatch)
    assert "-no-reboot" in m.command
    with m:
        assert [m.wait_boot(5) for _ in range(3)] == [1.0, 2.0, 3.0]
        m.expect(r"ready after 3 boots", 5)
    assert m.power_cycles == 2
    log = m.log_path.read_text()
    assert log.count("### qemu: ") == 3 and "the guest reset; power cycle 2 (QEMU -no-reboot" in log


def test_a_failing_qemu_is_not_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = fake_machine(tmp_path, monkeypatch, status=3)
    with m, pytest.raises(machine_mod.HarnessTimeout, match=r"QEMU exited \(status 3\) while waiting for"):
        m.wait_boot(5)
        m.wait_boot(5)
    assert m.power_cycles == 0


def test_warm_reset_leaves_the_reset_to_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = fake_machine(tmp_path, monkeypatch, warm_reset=True)
    assert "-no-reboot" not in m.command
    with m, pytest.raises(machine_mod.HarnessTimeout, match=r"QEMU exited \(the guest powered off\)"):
        m.wait_boot(5)
        m.wait_boot(5)


def test_ocr_text_is_compared_without_blanks_and_look_alikes_but_with_its_case() -> None:
    from tests.helpers import flat

    assert flat("appliance 2026.12 .04-bOcef4b3") == flat("appliance 2026.12.04-b0cef4b3")
    assert flat("/dev/udal") == flat("/dev/vda1")
    assert flat("previous boot ended") != flat("PREVIOUS BOOT ended")  # the banner's capitals count
    assert flat("core started") != flat("core stopped")
