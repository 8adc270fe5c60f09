"""Crash reports in QEMU: a real Bugsink on the host's loopback, reached through QEMU's
restricted user network (a socat for each connection), the DSN given on the ESP.

Two machines share the contract's cases between them: a crash loop whose first crashes
are made while the tracker is away (they arrive once it is up, each once, with their
frames and source lines; then every crash of a core that dies 3 s after each start gets
out), and a kernel panic whose report meets a tracker that answers 429, 500, garbage and
nothing before it behaves (the core runs throughout, nothing is lost).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.esp import identity, layout, uki
from appliance.harness import bugsink, syslogd
from appliance.harness.machine import Machine
from appliance.harness.qemu import user_network
from appliance.init import clock
from tests.helpers import act, always
from tests.loopback_tracker import Tracker

pytestmark = pytest.mark.qemu

GUEST = "10.0.2.100:8080"  # where the machine reaches the tracker
SYSLOG = "10.0.2.101:514"  # and the syslog receiver (the test network image's SYSLOG=)
HOST = re.escape(GUEST.split(":")[0])
TOKEN = re.compile(r"LookupError: matrix core: raised on purpose, token ([0-9a-f]{8})")


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[bugsink.Bugsink]:
    why = bugsink.available()
    if why:
        pytest.fail(f"{why}: make test installs it first")
    t = bugsink.Bugsink(tmp_path / "bugsink").set_up()
    try:
        yield t
    finally:
        t.stop()


def machine(image: Path, tmp_path: Path, log_dir: Path, name: str, port: int, dsn: str,
            extra: tuple[str, ...] = (), syslog_port: int = 0) -> Machine:
    relay = {GUEST: port, **({SYSLOG: syslog_port} if syslog_port else {})}
    m = Machine(image, tmp_path / "m", name=name, log_dir=log_dir, nic=(*user_network(relay=relay), *extra))
    m.esp_write(layout.CRASH_REPORTS, f"# the fleet's tracker\ndsn = {dsn}\n".encode())
    return m


def frames_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    return list(event["exception"]["values"][-1]["stacktrace"]["frames"])


def test_crashes_made_offline_arrive_once_and_a_crash_loop_gets_every_crash_out(
        test_net_raw: Path, qemu_ready: None, tracker: bugsink.Bugsink, tmp_path: Path, log_dir: Path) -> None:
    """Also the console's lines, forwarded to a real rsyslogd as they happen."""
    why = syslogd.available()
    if why:
        pytest.fail(f"{why}: make test installs it first")
    receiver = syslogd.Syslogd(tmp_path / "rsyslog").start()
    tracker.stop()  # away while the first crashes are made
    m = machine(test_net_raw, tmp_path, log_dir, "reports-backlog", tracker.port, tracker.guest_dsn(GUEST),
                syslog_port=receiver.port)
    always(m, b"raise-after 3")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: crash reports: 0 sent to " + HOST + r" \(0 pending\)", 120)  # boot 1: nothing yet
        m.expect(r"init: crash reports: could not send 000001-runtime-log\.rec to " + HOST, 180)
        m.expect(r"init: crash reports: 2 pending; next try in 5 s", 180)
        m.expect(r"init: crash reports: 3 pending; next try in 5 s", 180)
        tracker.start()
        # The next boot sends the backlog (the boot before's crash too), oldest first.
        m.expect(r"init: crash reports: sent 000001-runtime-log\.rec to " + HOST, 180)
        m.expect(r"init: crash reports: sent 000004-runtime-log\.rec to " + HOST, 60)
        # Then each boot of the crash loop sends the crash before it, in the time the init gives.
        m.expect(r"init: crash reports: sent 000005-runtime-log\.rec to " + HOST, 240)
        m.expect(r"init: crash reports: 1 sent to " + HOST + r" \(0 pending\)", 60)
        # The forwarder sends as the machine runs; a cut loses what is still on its way.
        # (the line itself: an earlier boot's retries may have said "1 sent" too)
        logged = receiver.wait_for("init: crash reports: sent 000005-runtime-log.rec", 30 * m.multiplier)
        m.power_cut()
    receiver.stop()
    assert "matrix init 1 init: syslog: the console's lines go to 10.0.2.101:514 (RFC 5424 over TCP)" in logged
    assert any(re.fullmatch(r"matrix core \d+ LookupError: matrix core: raised on purpose, token [0-9a-f]{8}", line)
               for line in logged)  # the core's stderr as it died, before the next boot showed it
    assert any("init: crash reports: sent 000005-runtime-log.rec" in line for line in logged)
    console = m.log_path.read_text(errors="replace")
    made = list(dict.fromkeys(TOKEN.findall(console)))  # every crash, in order
    events = tracker.crash_events()
    arrived = [TOKEN.search(e["exception"]["values"][-1]["type"] + ": " + e["exception"]["values"][-1]["value"])
               for e in events]
    tokens = [a.group(1) for a in arrived if a]
    assert len(tokens) == len(events) == len(set(tokens)) == 5, (tokens, made)  # each crash stored once
    assert set(tokens) == set(made[:5])
    assert len({e["event_id"] for e in events}) == 5
    event = events[-1]
    top = frames_of(event)[-1]
    assert top["function"] == "raise_from_a_helper" and top["in_app"] is True
    assert top["filename"] == "/usr/lib/appliance/core/__main__.py"
    assert top["context_line"].strip() == "raise LookupError(reason)"
    assert any("reason = f\"matrix core: raised on purpose, {what}\"" in line for line in top["pre_context"])
    functions = [(f["function"], f["in_app"]) for f in frames_of(event)]
    assert functions[-3:] == [("<module>", True), ("main", True), ("raise_from_a_helper", True)]
    assert not functions[0][1]  # the launcher's frames (runpy) are not the core's own
    assert event["release"] and event["server_name"] == "matrix"
    assert event["tags"]["boot_ended"].startswith("core crash") and len(event["tags"]["machine_id"]) == 16
    assert "LookupError" in event["extra"]["log_tail"] and "timestamp" in event
    names = m.esp_list(layout.HISTORY_DIR)
    assert names and all(n.endswith(".sent.rec") for n in names[:-1]), names  # the newest may not be out yet


def test_a_kernel_panic_meets_a_broken_tracker_then_arrives_with_its_kernel_log(
        test_net_raw: Path, qemu_ready: None, tracker: bugsink.Bugsink, tmp_path: Path, log_dir: Path) -> None:
    front = Tracker(upstream=tracker.port)  # a tracker that misbehaves as told, then passes the reports on
    front.rate_limit, front.silence, front.mode = 5, 60, "429"
    try:
        key = tracker.guest_dsn(GUEST)
        # Its RTC's battery is dead: 2001 at every boot. The clock goes to the image's build, then
        # (the next boot) to the time it saved; crash reports carry the times it had.
        m = machine(test_net_raw, tmp_path, log_dir, "reports-hostile", front.server.server_address[1], key,
                    extra=("-rtc", "base=2001-01-01"))
        built = identity.from_fields(uki.read_path(str(test_net_raw.with_suffix(".efi"))).os_release).built_at
        act(m, b"panic r3p0rt")
        with m:
            m.wait_boot(timeout=120)
            m.expect(r"init: clock: 2001-01-01T\S+ from the RTC is before the image's build: set to "
                     + re.escape(clock.iso(built)), 60)
            seen = int(m.expect(r"matrix core: clock (\d+)\r*\n", 60).group(1))
            assert built <= seen < built + 600
            m.expect(r"Kernel panic - not syncing", 90)
            m.wait_boot(timeout=180)  # panic=10: the kernel reboots by itself
            saved = m.expect(r"init: clock: 2001-01-01T\S+ from the RTC is before the time this machine last "
                             r"saved: set to (\S+)\r*\n", 60).group(1)
            floor = calendar.timegm(time.strptime(saved, "%Y-%m-%dT%H:%M:%SZ"))
            assert built <= floor and int(m.expect(r"matrix core: clock (\d+)\r*\n", 60).group(1)) >= floor
            m.expect(r"matrix core: ready", 90)  # the core starts on time whatever the tracker does
            m.expect(HOST + r" is rate-limiting \(HTTP 429\): 00000\d-\S+ waits 5 s", 120)
            front.mode = "500"
            m.expect(r"could not send 00000\d-\S+ to " + HOST + r": HTTP 500", 60)
            front.mode = "garbage"
            m.expect(r"could not send 00000\d-\S+ to " + HOST + r": \w+", 60)
            front.mode = "silent"
            m.expect(r"could not send 00000\d-\S+ to " + HOST + r": no whole answer within 30 s", 120)
            front.mode = "ok"
            m.expect(r"init: crash reports: 1 sent to " + HOST + r" \(0 pending\)", 120)
            m.send("\n")
            assert "matrix core: ready" not in m.watch(1)  # still the same boot: nothing restarted the core
            m.power_cut()
    finally:
        front.close()
    events = tracker.crash_events()
    assert [e["tags"]["kind"] for e in events] == ["kernel-panic"], events  # its core wrote no stderr: no log
    panic = events[0]
    assert "Kernel panic - not syncing" in panic["message"]["formatted"]
    assert "matrix core: about to panic the kernel, token r3p0rt" in panic["extra"]["kernel_log"]
    assert all(n.endswith(".sent.rec") for n in m.esp_list(layout.HISTORY_DIR))
