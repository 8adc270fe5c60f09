"""``Machine``: one QEMU guest on private copies of a disk image and the OVMF variables.

Verbs: ``start``, ``expect``, ``wait_boot`` (counts boots), ``power_cut`` (kill QEMU;
``start`` again boots from the same disk and variables), ESP file access between
boots (mtools), ``stop``. Every byte of the console goes to a log file that starts
with the host's facts and the exact QEMU command; a timeout says how to reproduce.

When the guest resets (the init reboots, the kernel panics), the machine is
power-cycled: QEMU runs with ``-no-reboot``, exits, and ``expect`` starts it again on
the same disk and variables. Under TCG a warm reset of QEMU sometimes left the next
boot crawling before any of our code ran: the kernel's EFI stub decompressing itself
took 27-125 s instead of about 1 s in 5 of 6 tries with two virtio disks, and up to
14 s with one (QEMU 7.2; never after a fresh start, 11 tries). A test of what survives
a warm reset (a watchdog's boot status) asks for one with ``warm_reset=True``.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import time
from collections import deque
from pathlib import Path
from types import TracebackType

import pexpect

from appliance.harness import screen
from appliance.harness.qemu import Drive, MachineSpec, command, find_ovmf, kvm_works
from appliance.media import espfs

OWNER_GUID = "6f0ed740-9d20-46f1-8429-56c26738b531"  # the owner of a certificate enrolled in db (ours)
SHIM_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"  # shim's vendor GUID: the owner of MOKs
ANSI = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")  # a full-screen UI's cursor moves and colours
BANNER = re.compile(r"init: appliance init \S+ started at ([0-9.]+) s since boot")


def timeout_multiplier() -> float:
    try:
        return max(0.1, float(os.environ.get("TIMEOUT_MULTIPLIER", "1")))
    except ValueError:
        return 1.0


class HarnessTimeout(AssertionError):
    """What was awaited did not appear; the message has the console's tail and a reproducer."""


class _Tail:
    """A text sink keeping the last lines (for failure messages) and writing the log."""

    def __init__(self, log: Path) -> None:
        self.file = log.open("a", encoding="utf-8", errors="replace")
        self.lines: deque[str] = deque(maxlen=50)
        self.partial = ""

    def write(self, text: str) -> None:
        text = text.replace("\r\n", "\n").replace("\r", "")
        self.file.write(text)
        self.file.flush()
        text = self.partial + text
        *whole, self.partial = text.split("\n")
        self.lines.extend(line.rstrip("\r") for line in whole)

    def flush(self) -> None:
        self.file.flush()

    def tail(self) -> str:
        return "\n".join([*self.lines, self.partial])


class Machine:
    def __init__(self, image: str | Path, workdir: str | Path, *, name: str = "machine",
                 interface: str = "virtio", readonly: bool = False,
                 extra_drives: tuple[Drive, ...] = (), extra_drives_first: bool = False, memory_mib: int = 1024,
                 watchdog: bool = False, warm_reset: bool = False, log_dir: str | Path | None = None,
                 machine: str = "q35", blkdebug: str | None = None, resume: bool = False,
                 secure_boot: str = "off", db_cert: str | Path | None = None,
                 mok_cert: str | Path | None = None, nic: tuple[str, ...] = (),
                 wrapper: tuple[str, ...] = (), disk_size: int | None = None, display: str = "",
                 keyboard: str = "") -> None:
        """``disk_size``: the disk is that big (the image written onto a bigger stick);
        ``display``: a monitor (harness.screen.DISPLAYS), read with ``screen_text``;
        ``keyboard``: "usb" types the keys on a USB keyboard (drivers the init loads) instead of PS/2."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.disk = self.workdir / "disk.raw"
        if secure_boot not in ("off", "ms", "own"):
            raise ValueError(f"secure_boot={secure_boot!r}: off, ms (a stock PC: Microsoft's keys enrolled) "
                             "or own (also the certificate db_cert= in db)")
        if secure_boot == "own" and db_cert is None:
            raise ValueError("secure_boot='own' needs db_cert=: the certificate to enroll in db")
        fw = find_ovmf(secure_boot=secure_boot != "off")
        self.vars = self.workdir / "OVMF_VARS.fd"
        if not (resume and self.disk.exists() and self.vars.exists()):
            subprocess.run(["cp", "--sparse=always", str(image), str(self.disk)], check=True)
            if disk_size is not None:
                os.truncate(self.disk, disk_size)
            enroll = []
            if secure_boot == "own":  # an owner's machine: their certificate beside Microsoft's in db
                enroll += ["--add-db", OWNER_GUID, str(db_cert)]
            if mok_cert is not None:  # a stock PC whose owner enrolled our key with MokManager once
                enroll += ["--add-mok", SHIM_GUID, str(mok_cert)]
            if enroll:
                subprocess.run(["virt-fw-vars", "--input", fw.vars_template, "--output", str(self.vars), *enroll],
                               check=True, capture_output=True)
            else:
                shutil.copyfile(fw.vars_template, self.vars)
        accel = "kvm" if kvm_works() else "tcg"
        # The image is always what the firmware boots (boot index 0); extra drives can
        # come first on the bus, so the firmware and the kernel see them first.
        ours = Drive(str(self.disk), interface, readonly, bootindex=0, blkdebug=blkdebug)
        others = tuple(Drive(d.path, d.interface, d.readonly, d.bootindex if d.bootindex is not None else i + 1)
                       for i, d in enumerate(extra_drives))
        self.spec = MachineSpec(
            drives=(*others, ours) if extra_drives_first else (ours, *others),
            firmware=fw, vars_path=str(self.vars), accel=accel,
            memory_mib=memory_mib, watchdog=watchdog, no_reboot=not warm_reset, machine=machine,
            secure_boot=secure_boot != "off", extra=nic, wrapper=wrapper, display=display,
            qmp=str(self.workdir / "qmp.sock") if display else "", keyboard=keyboard,
        )
        self.screendumps = 0
        self.warm_reset = warm_reset
        self.power_cycles = 0  # guest resets turned into a fresh QEMU
        self.multiplier = timeout_multiplier()
        log_root = Path(log_dir) if log_dir else self.workdir
        log_root.mkdir(parents=True, exist_ok=True)
        self.log_path = log_root / f"{name}.console.log"
        self.log_path.unlink(missing_ok=True)
        self.sink = _Tail(self.log_path)
        self.proc: pexpect.spawn | None = None
        self.boots = 0
        self.boot_uptimes: list[float] = []
        self.started_at = 0.0
        self._screen = ""  # a full-screen UI's text not yet matched by expect_screen

    # -- life cycle --------------------------------------------------------------------------
    @property
    def command(self) -> list[str]:
        return command(self.spec)

    def reproducer(self) -> str:
        return (f"reproduce: cp {shlex.quote(str(self.disk))} /tmp/disk.raw; "
                f"{shlex.join(self.command)}  (console log: {self.log_path})")

    def start(self) -> Machine:
        if self.proc is not None and self.proc.isalive():
            raise RuntimeError("the machine is already running")
        self.sink.write(
            f"### {self.name}: {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            f"### host: {platform.node()} {platform.platform()}, {os.cpu_count()} cpus, accel {self.spec.accel}, "
            f"timeout multiplier {self.multiplier:g}\n"
            f"### qemu: {shlex.join(self.command)}\n"
        )
        self.started_at = time.monotonic()
        self.proc = pexpect.spawn(self.command[0], self.command[1:], encoding="utf-8", codec_errors="replace",
                                  timeout=None, echo=False, dimensions=(50, 200))
        self.proc.logfile_read = self.sink
        return self

    def __enter__(self) -> Machine:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.isalive():
                self.proc.terminate(force=True)
            self.proc.close(force=True)
            self.proc = None
        self.sink.flush()

    def power_cut(self) -> None:
        """Kill QEMU at once, like pulling the plug. ``start`` boots the same disk again."""
        if self.proc is not None and self.proc.pid:
            try:
                os.kill(self.proc.pid, 9)
            except ProcessLookupError:
                pass
        self.stop()
        self.sink.write(f"\n### {self.name}: power cut\n")

    # -- the console ------------------------------------------------------------------------
    def expect(self, pattern: str | re.Pattern[str] | list[str | re.Pattern[str]], timeout: float) -> re.Match[str]:
        """Wait for ``pattern`` (a regex) on the console; ``timeout`` is scaled by the multiplier."""
        if self.proc is None:
            raise RuntimeError("the machine is not running")
        scaled = timeout * self.multiplier
        deadline = time.monotonic() + scaled
        while True:
            try:
                self.proc.expect(pattern, timeout=max(0.0, deadline - time.monotonic()))
                break
            except pexpect.TIMEOUT:
                raise HarnessTimeout(self._failure(f"timed out after {scaled:g} s waiting for {pattern!r}")) from None
            except pexpect.EOF:
                why = self._restart_after_reset()
                if why:
                    raise HarnessTimeout(self._failure(f"{why} while waiting for {pattern!r}")) from None
        match = self.proc.match
        assert isinstance(match, re.Match)
        return match

    def _restart_after_reset(self) -> str:
        """QEMU ended: after a guest reset (status 0 under -no-reboot) start it again, the
        power cycle; return "" then, else what happened."""
        assert self.proc is not None
        self.proc.close()
        status, signal = self.proc.exitstatus, self.proc.signalstatus
        self.proc = None
        if status != 0:
            return f"QEMU exited ({f'status {status}' if signal is None else f'signal {signal}'})"
        if self.warm_reset:
            return "QEMU exited (the guest powered off)"
        self.power_cycles += 1
        self.sink.write(f"\n### {self.name}: the guest reset; power cycle {self.power_cycles} "
                        "(QEMU -no-reboot, started again)\n")
        self.start()
        return ""

    def watch(self, seconds: float) -> str:
        """Let the guest run for ``seconds`` (resets are power cycles, as in ``expect``);
        the console text it printed meanwhile."""
        if self.proc is None:
            raise RuntimeError("the machine is not running")
        deadline = time.monotonic() + seconds
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.proc.expect(pexpect.TIMEOUT, timeout=left)
                seen.append(str(self.proc.before))
            except pexpect.EOF:
                seen.append(str(self.proc.before))
                why = self._restart_after_reset()
                if why:
                    raise HarnessTimeout(self._failure(why)) from None
        return "".join(seen)

    def expect_screen(self, text: str, timeout: float) -> None:
        """Wait for ``text`` on a full-screen UI drawn on the serial console (firmware
        menus, MokManager): its escape sequences stripped, its frames and runs of blanks
        made one space."""
        deadline = time.monotonic() + timeout * self.multiplier
        seen = self._screen
        while True:
            plain = re.sub(r"[^\x21-\x7e]+", " ", ANSI.sub(" ", seen))  # box drawing and blanks: one space
            if text in plain:
                self._screen = plain[plain.index(text) + len(text):]
                return
            if time.monotonic() > deadline:
                self._screen = ""
                raise HarnessTimeout(self._failure(f"timed out after {timeout * self.multiplier:g} s waiting "
                                                   f"for {text!r} on the screen"))
            seen += self.watch(0.5)

    def send(self, text: str) -> None:
        """Type on the serial console (firmware menus, MokManager)."""
        if self.proc is None:
            raise RuntimeError("the machine is not running")
        self.proc.send(text)

    # -- the monitor (display=) ----------------------------------------------------------------
    def screendump(self, name: str = "") -> Path:
        """The monitor's picture now, as a PNG beside the console log."""
        if not self.spec.qmp or self.proc is None:
            raise RuntimeError("the machine has no display (display=), or is not running")
        self.screendumps += 1
        path = self.log_path.with_name(f"{self.name}.screen-{self.screendumps:02d}{'-' + name if name else ''}.png")
        path.unlink(missing_ok=True)
        screen.qmp(self.spec.qmp, "screendump", {"filename": str(path), "format": "png"})
        self.sink.write(f"\n### {self.name}: screendump {path}\n")
        return path

    def screen_text(self, name: str = "") -> str:
        """What the monitor shows now, read by OCR (kept beside the picture as .txt)."""
        shot = self.screendump(name)
        text = screen.read_text(shot, shot.parent)
        shot.with_suffix(".txt").write_text(text)
        return text

    def keys(self, *combos: str) -> None:
        """Key combinations pressed at the monitor's keyboard ("alt-f2", "ret")."""
        screen.send_keys(self.spec.qmp, *combos)

    def type_at_screen(self, text: str) -> None:
        """Text typed at the monitor's keyboard, key by key."""
        screen.type_text(self.spec.qmp, text)

    def wait_boot(self, timeout: float = 120) -> float:
        """Wait for the init's banner; returns the guest uptime it printed."""
        m = self.expect(BANNER, timeout)
        self.boots += 1
        self.boot_uptimes.append(float(m.group(1)))
        return float(m.group(1))

    def output_since_start(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _failure(self, what: str) -> str:
        return f"{self.name}: {what}\n--- last console lines ---\n{self.sink.tail()}\n--- \n{self.reproducer()}"

    # -- the ESP, between boots ------------------------------------------------------------
    def _esp(self) -> espfs.EspImage:
        if self.proc is not None and self.proc.isalive():
            raise RuntimeError("stop the machine (or cut the power) before touching its disk")
        return espfs.EspImage(self.disk)

    def esp_read(self, path: str) -> bytes:
        return self._esp().read(path)

    def esp_write(self, path: str, data: bytes) -> None:
        self._esp().write(path, data)

    def esp_list(self, directory: str) -> list[str]:
        return self._esp().list(directory)

    def esp_free(self) -> int:
        return self._esp().free()

    def esp_delete(self, path: str) -> None:
        self._esp().delete(path)
