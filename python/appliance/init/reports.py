"""Crash reports: the reporter started once the core has had its start, its lines on the
console, and a bounded time for it at the way out.

The reporter (``appliance.report``) is a process of its own: whatever the tracker sends
is read there, never in PID 1. The init only starts it, puts its lines (bounded) on the
console from a thread, and, at the way out (after the crash-loop back-off, during which it
goes on sending), gives it a bounded time while it is sending and the network is up: a
core that crashes seconds after every start still gets every crash out. A reporter that
waits out a tracker's back-off or rate limit is not waited for: its records go at a
later boot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.esp import kvfile, layout
from appliance.init.helper import EspHelper
from appliance.init.sigs import signal
from appliance.initconf import NETWORK_STATE, REPORTS_STATE

if TYPE_CHECKING:
    import threading

GRACE = 20.0  # seconds the way out waits for reports still being sent


class Reports(EspHelper):
    name = "crash reports"
    esp_file = layout.CRASH_REPORTS
    not_writable = "not sending: the ESP is not writable (a record sent could not be marked)"

    @property
    def pid(self) -> int:
        return self.helper.pid

    @property
    def done(self) -> threading.Event | None:
        return self.helper.done  # set once the reporter's output ended: it exited

    def configured(self) -> bool:
        return bool(self.config.crash_reports)

    def argv(self) -> list[str]:
        return ["appliance.report", "--esp", self.root(layout.MOUNT), "--state", self.root(REPORTS_STATE)]

    def state_of(self, path: str) -> str:
        try:
            with open(self.root(path), "rb") as f:
                return kvfile.parse(f.read(4096)).get("state", "")
        except (OSError, ValueError):
            return ""

    def sending(self) -> bool:
        """Whether waiting is worth it: the network is up (or its lease is on the way) and
        the reporter is starting or sending (not waiting out a back-off or a rate limit)."""
        return (self.state_of(NETWORK_STATE) in ("up", "starting")
                and self.state_of(REPORTS_STATE) in ("sending", ""))

    def finish(self, pet: Callable[[], None] = lambda: None, grace: float = GRACE) -> None:
        """At the way out: a bounded time for reports still being sent, then the reporter
        is stopped (the reboot would stop it anyway; this says so)."""
        done = self.helper.done
        if not self.helper.running() or done is None:
            return
        if self.sending():
            self.say(f"crash reports: still sending; waiting at most {grace:g} s before going on")
            until, next_pet = time.monotonic() + grace, 0.0
            while (left := until - time.monotonic()) > 0 and not done.wait(min(left, 0.5)):
                if not self.sending():
                    break  # it went to waiting (the tracker is away), or the network went down
                if time.monotonic() >= next_pet:
                    pet()
                    next_pet = time.monotonic() + 5.0
        if not done.is_set():
            try:
                os.kill(self.helper.pid, signal.SIGKILL)
            except OSError:
                pass
            done.wait(2.0)
            self.say("crash reports: stopped the reporter; what it had not sent goes at the next boot")
