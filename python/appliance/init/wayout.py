"""PID 1's one way out: persist what is known, say why, sync, then reboot (or hold).

Every path of the boot ends here: the core's end, a failed required step, a bug in the
init. Nothing here may stop the next step, and nothing returns: PID 1 exiting panics
the kernel.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from appliance.esp import backoff, layout
from appliance.init.console import Console
from appliance.init.sigs import signal
from appliance.initconf import Config

if TYPE_CHECKING:
    from appliance.init.clock import WallClock
    from appliance.init.data import Data
    from appliance.init.hardware import Hardware
    from appliance.init.persistence import Persistence
    from appliance.init.reports import Reports
    from appliance.init.syslog import Forwarder


SYSLOG_FLUSH = 2.0  # seconds the last lines get to reach the syslog receiver


class WayOut:
    def __init__(self, kernel: object, console: Console, config: Config, persist: Persistence | None = None,
                 hardware: Hardware | None = None, mountpoint: str = layout.MOUNT) -> None:
        self.kernel = kernel
        self.console = console
        self.config = config
        self.persist = persist
        self.hardware = hardware
        self.mountpoint = mountpoint
        self.about: dict[str, str] = {}  # what this boot says of itself (lastboot.ABOUT)
        self.reports: Reports | None = None  # the crash reporter, once started
        self.clock: WallClock | None = None  # saved at the way out: the next boot's floor
        self.syslog: Forwarder | None = None  # given a moment to send the last lines
        self.data: Data | None = None  # unmounted once every process is gone

    def end(self, reason: str, failed: bool, category: str = "init") -> NoReturn:
        """Persist, say why, sync, reboot. ``category``: requested | core | init."""
        say = self.console.say
        if failed:
            say("the appliance encountered an uncorrectable error and must be restarted")
            say(f"cause: {reason}")
        persist = self.persist
        failures = ((persist.failures if persist is not None else 0) + 1) if failed else 0
        if persist is not None:
            persist.close_log()
            if failed or persist.failures:
                persist.save_failures(failures)
            persist.save_ended(category, reason, {**self.about, "ended-at": f"{time.time():.0f}"})
            if self.clock is not None:
                self.clock.save()
        os.sync()
        hold = self.hold_requested()
        if hold:
            self.hold(hold)
        wait = backoff.delay(failures, self.config.backoff_first_seconds,
                             self.config.backoff_max_seconds) if failed else 0.0
        if wait:
            say(f"crash loop back-off: waiting {wait:g} s before rebooting (failure {failures} in a row)")
            until = time.monotonic() + wait
            while (left := until - time.monotonic()) > 0:
                self.pet()
                time.sleep(min(left, 5.0))
        if self.reports is not None:  # it sent during the back-off; what it is still sending gets a bounded time
            try:
                self.reports.finish(self.pet)
            except Exception as e:  # noqa: BLE001 - nothing here may stop the way out
                say(f"crash reports: could not wait for the reporter: {e}")
        if self.syslog is not None:
            self.syslog.flush(SYSLOG_FLUSH)
        self.pet()
        data = self.data
        reboot(self.kernel, self.console, persist.device if persist and persist.files else None,
               self.hardware.close_watchdogs if self.hardware else lambda: None, self.mountpoint,
               unmount=data.unmount if data is not None else lambda: None)

    def pet(self) -> None:
        if self.hardware is not None:
            self.hardware.pet_watchdogs()

    def hold_requested(self) -> str:
        if self.config.hold:
            return "appliance.hold on the kernel command line"
        if self.persist is not None and self.persist.hold_file():
            return f"the file {layout.MOUNT}{layout.HOLD}"
        return ""

    def hold(self, why: str) -> NoReturn:
        if self.hardware is not None:
            self.hardware.close_watchdogs()
        self.console.say(f"holding, not rebooting ({why}); reset or power off the machine")
        while True:
            time.sleep(1)
            reap_all()


def reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def reboot(kernel: object, console: Console, esp_device: str | None,
           stop_watchdogs: Callable[[], None] = lambda: None, mountpoint: str = layout.MOUNT,
           unmount: Callable[[], None] = lambda: None) -> NoReturn:
    """The last steps, each on its own: nothing here may stop the next one."""
    from appliance.init.kernel import MS_RDONLY, MS_REMOUNT, RB_AUTOBOOT
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGTERM)
            time.sleep(0.2)
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        reap_all()
    try:
        os.sync()
    except OSError:
        pass
    try:  # the data partition: unmounted, its journal empty for the next boot
        unmount()
    except Exception as e:  # noqa: BLE001
        console.say(f"could not unmount the data partition: {e}")
    if esp_device:
        try:  # a clean FAT (no dirty bit) for the next boot and for the stick's next reader
            kernel.mount(esp_device, mountpoint, "vfat", MS_REMOUNT | MS_RDONLY, "")  # type: ignore[attr-defined]
        except OSError as e:
            console.say(f"could not remount the ESP read-only: {e}")
    try:  # a planned reboot: the watchdogs must not fire while the firmware starts
        stop_watchdogs()
    except Exception as e:  # noqa: BLE001
        console.say(f"could not stop the watchdogs: {e}")
    console.at("rebooting")
    try:
        kernel.reboot(RB_AUTOBOOT)  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001
        console.say(f"reboot failed: {e}; halting here")
    while True:  # never exit: PID 1 exiting panics the kernel
        time.sleep(3600)
