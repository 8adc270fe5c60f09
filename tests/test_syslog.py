"""The console to syslog: the forwarder against a real rsyslogd on the loopback (make deps
unpacks it), away and back, with its queue bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.harness import syslogd
from appliance.init import syslog


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[syslogd.Syslogd]:
    why = syslogd.available()
    if why:
        pytest.fail(f"{why}: make test installs it first")
    r = syslogd.Syslogd(tmp_path / "rsyslog")
    yield r
    r.stop()


def wait_for(receiver: syslogd.Syslogd, n: int, seconds: float = 20) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = receiver.messages()
        if len(got) >= n:
            return got
        time.sleep(0.1)
    return receiver.messages()


def test_the_init_and_core_lines_arrive_as_rfc5424_with_their_sources(receiver: syslogd.Syslogd) -> None:
    receiver.start()
    said: list[str] = []
    f = syslog.Forwarder(f"127.0.0.1:{receiver.port}", "kiosk-3", said.append)
    f.core_pid = "132"
    f.start()
    f.feed(b"init: core started: pid 132\n", "init")
    f.feed(b"Traceback (most recent call last):\n  File \"x\"", "core")  # a line arrives in pieces
    f.feed(b", line 1\nRuntimeError: boom\n", "core")
    assert wait_for(receiver, 4) == ["kiosk-3 init 1 init: core started: pid 132",
                                     "kiosk-3 core 132 Traceback (most recent call last):",
                                     'kiosk-3 core 132   File "x", line 1', "kiosk-3 core 132 RuntimeError: boom"]
    assert f.flush(5) and said == []


def test_lines_wait_while_the_receiver_is_away_and_the_oldest_go_first(
        receiver: syslogd.Syslogd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syslog, "MAX_LINES", 50)
    monkeypatch.setattr(syslog, "RETRY_MAX", 0.5)
    said: list[str] = []
    f = syslog.Forwarder(f"127.0.0.1:{receiver.port}", "kiosk-3", said.append)
    f.start()
    for i in range(80):
        f.feed(f"init: line {i}\n".encode(), "init")
    time.sleep(0.5)
    assert said and said[0].startswith(f"syslog: 127.0.0.1:{receiver.port} unreachable (ConnectionRefusedError")
    assert not f.flush(0.2)  # nothing can go: the way out would not wait long
    receiver.start()
    got = wait_for(receiver, 51)
    assert got[0] == f"kiosk-3 init 1 init: syslog: 30 lines were dropped while 127.0.0.1:{receiver.port} was away"
    assert got[1:] == [f"kiosk-3 init 1 init: line {i}" for i in range(30, 80)]
    assert f"syslog: 127.0.0.1:{receiver.port} reached again" in said
