"""The init's side of crash reports: the real reporter process started as the init starts
it (in a folder standing in for the machine), its lines on the console, its bounded
time at the way out."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.esp import layout
from appliance.esp.files import MountedEsp
from appliance.esp.history import History
from appliance.init.helper import PYTHON, PYTHONPATH
from appliance.init.reports import Reports
from appliance.init.root import Root
from appliance.initconf import NETWORK_STATE, Config
from tests.loopback_tracker import Tracker

REPO_PYTHON = Path(__file__).resolve().parents[1] / "python"


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    t = Tracker()
    yield t
    t.close()


@pytest.fixture(autouse=True)
def reaped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The reporters these tests start are reaped here (the init's supervisor reaps them on
    the machine): left as zombies, they would be counted by a later supervisor test."""
    started: list[Reports] = []
    real = Reports.start

    def start(self: Reports) -> None:
        started.append(self)
        real(self)
    monkeypatch.setattr(Reports, "start", start)
    yield
    for reports in started:
        if reports.pid:
            os.waitpid(reports.pid, 0)


def machine(tmp_path: Path, tracker: Tracker, records: int = 2) -> tuple[Root, MountedEsp, list[str]]:
    """A root with the image's Python and package, an ESP with unsent records that names the
    tracker, and a network that is up."""
    root = Root(str(tmp_path))
    for path, target in ((PYTHON, sys.executable), (PYTHONPATH, str(REPO_PYTHON))):
        Path(root(path)).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root(path))
    Path(root(NETWORK_STATE)).parent.mkdir(parents=True)
    Path(root(NETWORK_STATE)).write_text("state=up\n")
    Path(root(layout.MOUNT)).mkdir()
    esp = MountedEsp(root(layout.MOUNT))
    history = History(esp, layout.HISTORY_DIR, free_floor=0)
    for i in range(records):
        history.add("runtime-log", f"core: RuntimeError: crash {i}\n".encode(), {"event-id": f"{i + 1:032x}"})
    esp.write(layout.CRASH_REPORTS, f"dsn = {tracker.dsn.text}\n".encode())
    return root, esp, []


def said_by(said: list[str], text: str) -> bool:
    return any(text in line for line in said)


def test_the_reporter_sends_the_backlog_and_says_so(tmp_path: Path, tracker: Tracker) -> None:
    root, esp, said = machine(tmp_path, tracker)
    reports = Reports(Config(network="dhcp"), said.append, root, lambda: esp)
    assert reports.wanted()
    reports.start()
    assert reports.done is not None and reports.done.wait(30), said
    assert "crash reports: 2 sent to 127.0.0.1 (0 pending)" in said, said
    assert sorted(esp.list(layout.HISTORY_DIR)) == ["000001-runtime-log.sent.rec", "000002-runtime-log.sent.rec"]
    assert len(tracker.received) == 2
    reports.finish(grace=1)  # it has ended: nothing to wait for, nothing said
    assert not said_by(said, "still sending")


def test_the_way_out_waits_a_bounded_time_then_stops_the_reporter(tmp_path: Path, tracker: Tracker) -> None:
    root, esp, said = machine(tmp_path, tracker)
    tracker.mode = "silent"  # takes the report and never answers
    reports = Reports(Config(network="dhcp"), said.append, root, lambda: esp)
    reports.start()
    while not tracker.received:
        threading.Event().wait(0.05)
    reports.finish(grace=1)
    assert said_by(said, "crash reports: still sending; waiting at most 1 s")
    assert said_by(said, "crash reports: stopped the reporter; what it had not sent goes at the next boot")
    assert reports.done is not None and reports.done.is_set()
    assert all(".sent." not in n for n in esp.list(layout.HISTORY_DIR))


def test_no_network_no_tracker_or_a_read_only_esp_start_nothing(tmp_path: Path, tracker: Tracker) -> None:
    root, esp, said = machine(tmp_path, tracker)
    assert not Reports(Config(network="off"), said.append, root, lambda: esp).wanted()
    esp.delete(layout.CRASH_REPORTS)
    assert not Reports(Config(network="dhcp"), said.append, root, lambda: esp).wanted()
    baked = Reports(Config(network="dhcp", crash_reports=tracker.dsn.text), said.append, root, lambda: None)
    assert baked.wanted()
    baked.start()
    assert baked.pid == 0 and said_by(said, "crash reports: not sending: the ESP is not writable")


def test_the_esp_file_can_turn_reports_off_or_be_garbage(tmp_path: Path, tracker: Tracker) -> None:
    root, esp, said = machine(tmp_path, tracker)
    for text, says in ((b"dsn = off\n", "crash reports: off ("), (b"\x00\xff junk", "is unreadable"),
                       (b"dsn = https://nokey.example/1\n", "is not usable: a DSN names the project's public key")):
        esp.write(layout.CRASH_REPORTS, text)
        reports = Reports(Config(network="dhcp", crash_reports=tracker.dsn.text), said.append, root, lambda: esp)
        reports.start()
        assert reports.done is not None and reports.done.wait(30)
        assert said_by(said, says), said
    assert tracker.received == []


def test_a_reporter_waiting_out_a_broken_tracker_is_not_waited_for(tmp_path: Path, tracker: Tracker) -> None:
    root, esp, said = machine(tmp_path, tracker)
    tracker.mode = "500"
    reports = Reports(Config(network="dhcp"), said.append, root, lambda: esp)
    reports.start()
    while not said_by(said, "next try in 5 s"):
        threading.Event().wait(0.05)
    reports.finish(grace=30)
    assert not said_by(said, "still sending") and said_by(said, "crash reports: stopped the reporter")
