"""Crash reports: the DSN, the parsers, the event and its envelope, and the queue against
a real HTTP server on the loopback that answers as trackers (and broken ones) do."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sentry_sdk.envelope import Envelope

from appliance.esp import layout, records
from appliance.esp.files import MountedEsp
from appliance.esp.history import History
from appliance.report import dsn as dsns
from appliance.report import event, send, tracebacks
from appliance.report.queue import DayState, Limits, Reporter, rate_limit_seconds
from tests.loopback_tracker import Tracker

MACHINE = event.Machine("1.4", "b" * 12, "shop-7", "0123456789abcdef", "/tmp/core", "appliance/test")

CRASHING = '''
import faulthandler, os, signal, threading, time

def parse(text):
    return {}[text]

def handle(text):
    try:
        parse(text)
    except KeyError as e:
        raise RuntimeError("bad request " + text) from e

if os.environ.get("SEGV"):
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    faulthandler.enable()
    os.kill(os.getpid(), signal.SIGSEGV)
handle("k")
'''


def run_core(tmp_path: Path, **env: str) -> bytes:
    """What a real core that crashes leaves in the runtime log: its stderr, tagged."""
    script = tmp_path / "core" / "main.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(CRASHING)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, env=env, check=False)
    return b"init: core started\n" + b"".join(b"core: " + line + b"\n" for line in done.stderr.splitlines())


# -- the DSN ------------------------------------------------------------------------------
def test_a_dsn_gives_the_envelope_address_and_the_auth_header() -> None:
    d = dsns.parse("https://abc123@sentry.example.org/42")
    assert d.envelope_url == "https://sentry.example.org/api/42/envelope/"
    assert "sentry_key=abc123" in d.auth("appliance/1")
    d = dsns.parse("http://k@127.0.0.1:8000/tracker/7")
    assert d.envelope_url == "http://127.0.0.1:8000/tracker/api/7/envelope/"
    assert dsns.parse("http://k@[fd00::1]:9000/3").envelope_url == "http://[fd00::1]:9000/api/3/envelope/"


@pytest.mark.parametrize(("text", "says"), [
    ("sentry.example.org/42", "starts with https://"),
    ("ftp://k@h/1", "starts with https://"),
    ("https://sentry.example.org/42", "public key"),
    ("https://k:secret@h/1", "secret key"),
    ("https://k@h/project", "project's number"),
    ("https://k@h:99999/1", "not a DSN"),
])
def test_a_bad_dsn_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        dsns.parse(text)


# -- the parsers --------------------------------------------------------------------------
def test_a_chained_exception_is_read_back_with_its_frames_and_source(tmp_path: Path) -> None:
    chain = tracebacks.last_exception_chain(tracebacks.lines_of(run_core(tmp_path)))
    assert [(e.type, e.value) for e in chain] == [("KeyError", "'k'"), ("RuntimeError", "bad request k")]
    cause = [(f.function, f.source) for f in chain[0].frames]
    assert cause == [("handle", "parse(text)"), ("parse", "return {}[text]")]
    last = chain[1].frames
    assert [f.function for f in last] == ["<module>", "handle"]
    assert last[-1].filename.endswith("core/main.py") and last[-1].source.startswith("raise RuntimeError")


def test_a_fatal_signal_gives_every_thread_oldest_frame_first(tmp_path: Path) -> None:
    dumps = tracebacks.fault_dumps(tracebacks.lines_of(run_core(tmp_path, SEGV="1")))
    assert len(dumps) == 1 and dumps[0].error == "Segmentation fault"
    current = [t for t in dumps[0].threads if t.current]
    others = [t for t in dumps[0].threads if not t.current]
    assert len(current) == 1 and current[0].frames[-1].function == "<module>"
    assert others and others[0].frames[0].function == "_bootstrap"  # oldest first


def test_only_the_last_chain_counts_and_a_deep_recursion_is_bounded() -> None:
    frames = ['  File "/x.py", line 3, in f', "    f()"] * 5000
    text = ["Traceback (most recent call last):", '  File "/a.py", line 1, in <module>', "ValueError: old",
            "noise", "Traceback (most recent call last):", *frames, "  [Previous line repeated 996 more times]",
            "RecursionError: maximum recursion depth exceeded"]
    chain = tracebacks.last_exception_chain(text)
    assert [e.type for e in chain] == ["RecursionError"]
    assert len(chain[0].frames) == tracebacks.MAX_FRAMES


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.text(max_size=80),
    st.sampled_from(["Traceback (most recent call last):", '  File "/a.py", line 9, in f', "    x()",
                     "ValueError: v", tracebacks._CHAINS[0], "Fatal Python error: Aborted",
                     "Current thread 0x00007f (most recent call first):", '  File "/a.py", line 9 in f',
                     "Thread 0x01 (most recent call first):", ""])), max_size=400))
def test_the_parsers_are_total_and_bounded(lines: list[str]) -> None:
    chain = tracebacks.last_exception_chain(lines)
    dumps = tracebacks.fault_dumps(lines)
    assert len(chain) <= tracebacks.MAX_CHAIN and all(len(e.frames) <= tracebacks.MAX_FRAMES for e in chain)
    assert len(dumps) <= tracebacks.MAX_THREADS
    assert all(len(t.frames) <= tracebacks.MAX_FRAMES for d in dumps for t in d.threads)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000))
def test_any_bytes_make_an_event_whose_envelope_parses(payload: bytes) -> None:
    record = records.Record({"kind": "runtime-log", "ended": "exited with status 1"}, payload)
    body = event.envelope(event.build(record, MACHINE), dsns.parse("https://k@h/1"), 1.8e9)
    parsed = Envelope.deserialize(body)
    assert parsed.items[0].type == "event" and parsed.get_event() is not None


# -- the event ----------------------------------------------------------------------------
def record_of(tmp_path: Path, payload: bytes, **meta: str) -> records.Record:
    return records.Record({"kind": "runtime-log", "event-id": "e" * 32, "boot-ended": "core crashed",
                           "secure-boot": "off", **meta}, payload)


def test_a_core_crash_is_an_event_with_frames_source_context_and_the_crash_time(tmp_path: Path) -> None:
    log = run_core(tmp_path)
    record = record_of(tmp_path, log, ended="exited with status 1", **{"ended-at": "1800000000"})
    built = event.build(record, MACHINE._replace(core_dir=str(tmp_path / "core")),
                        event.read_source((str(tmp_path),)), "000003-runtime-log.rec")
    body = event.envelope(built, dsns.parse("https://k@tracker.example/5"), now=1800000100)
    envelope = Envelope.deserialize(body)
    assert envelope.headers["event_id"] == "e" * 32
    got: dict[str, Any] = dict(envelope.get_event() or {})
    assert got["timestamp"] == 1800000000 and got["release"] == "1.4" and got["server_name"] == "shop-7"
    assert got["tags"]["build_id"] == "b" * 12 and got["tags"]["boot_ended"] == "core crashed"
    final = got["exception"]["values"][-1]
    assert (final["type"], final["value"]) == ("RuntimeError", "bad request k")
    top = final["stacktrace"]["frames"][-1]
    assert top["function"] == "handle" and top["in_app"] is True
    assert top["context_line"].strip().startswith("raise RuntimeError")
    assert any("parse(text)" in line for line in top["pre_context"])  # lines around it, from the file
    assert "bad request k" in got["extra"]["log_tail"] and "vars" not in json.dumps(got)


def test_a_fatal_signal_is_an_exception_of_the_signal_with_the_threads(tmp_path: Path) -> None:
    record = record_of(tmp_path, run_core(tmp_path, SEGV="1"), ended="killed by signal 11 (SIGSEGV)")
    got = event.build(record, MACHINE)
    (value,) = got["exception"]["values"]
    assert (value["type"], value["value"]) == ("SIGSEGV", "Segmentation fault")
    assert value["stacktrace"]["frames"][-1]["function"] == "<module>"
    assert len(got["threads"]["values"]) == 2


def test_a_kernel_panic_carries_its_log_lines() -> None:
    log = b"<6>[    1.0] booting\n<0>[    2.5] Kernel panic - not syncing: sysrq triggered crash\n"
    record = records.Record({"kind": "kernel-panic", "reason": "kernel panic", "event-id": "a" * 32}, log)
    got = event.build(record, MACHINE)
    assert "Kernel panic - not syncing: sysrq triggered crash" in got["message"]["formatted"]
    assert "booting" in got["extra"]["kernel_log"]


def test_a_record_without_an_id_gets_the_same_one_everywhere() -> None:
    meta = {"kind": "reset", "sha256": "ab" * 32}
    one, two = records.Record(dict(meta), b"x"), records.Record(dict(meta), b"x")
    assert event.event_id(one) == event.event_id(two) and len(event.event_id(one)) == 32
    assert event.event_id(records.Record({"kind": "reset", "sha256": "cd" * 32})) != event.event_id(one)


# -- the queue, against a real server ----------------------------------------------------
@pytest.fixture
def tracker() -> Iterator[Tracker]:
    t = Tracker()
    yield t
    t.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def reporter_for(tmp_path: Path, tracker: Tracker, clock: Clock, said: list[str],
                 limits: Limits | None = None) -> Reporter:
    history = History(MountedEsp(str(tmp_path)), layout.HISTORY_DIR, free_floor=0, free_bytes=lambda: 1 << 40)
    return Reporter(history, tracker.dsn, MACHINE, said.append, limits=limits or Limits(), clock=clock,
                    sleep=clock.sleep, post=functools.partial(send.post, seconds=2.0))


def add_crashes(r: Reporter, n: int) -> None:
    for i in range(n):
        r.history.add("runtime-log", f"core: RuntimeError: crash {i}\n".encode(), {"event-id": f"{i:032x}"})


def marks(r: Reporter) -> list[str]:
    return [mark for _, _, mark, _ in r.history.named()]


def test_a_backlog_goes_oldest_first_and_each_record_is_marked_sent(tmp_path: Path, tracker: Tracker) -> None:
    clock, said = Clock(), list[str]()
    r = reporter_for(tmp_path, tracker, clock, said)
    add_crashes(r, 3)
    assert r.run() == 3
    assert marks(r) == ["sent"] * 3
    ids = [Envelope.deserialize(body).headers["event_id"] for body in tracker.received]
    assert ids == [f"{i:032x}" for i in range(3)]
    assert tracker.headers[0]["X-Sentry-Auth"].startswith("Sentry sentry_version=7, sentry_key=pubkey")
    assert said[-1] == "crash reports: 3 sent to 127.0.0.1 (0 pending)"
    state = DayState.parse((tmp_path / "appliance" / "reports-state.txt").read_bytes())
    assert state.sent == 3 and state.size == sum(map(len, tracker.received))


def test_a_rate_limit_is_honoured_and_kept_across_a_restart(tmp_path: Path, tracker: Tracker) -> None:
    clock, said = Clock(), list[str]()
    r = reporter_for(tmp_path, tracker, clock, said)
    add_crashes(r, 2)
    tracker.mode = "429"
    assert r.run(forever=False) == 0
    assert marks(r) == ["", ""] and any("rate-limiting (HTTP 429)" in s for s in said)
    again = reporter_for(tmp_path, tracker, clock, said)  # the next boot
    assert again.run(forever=False) == 0 and len(tracker.received) == 1  # still waiting: nothing sent
    tracker.mode = "ok"
    assert again.run() == 2
    assert max(clock.slept) == pytest.approx(120, abs=1)  # the wait the tracker asked for
    assert rate_limit_seconds(send.Answer(429, retry_after="30"), 0) == 30


def test_a_refusal_marks_the_record_and_says_why(tmp_path: Path, tracker: Tracker) -> None:
    clock, said = Clock(), list[str]()
    r = reporter_for(tmp_path, tracker, clock, said)
    add_crashes(r, 1)
    tracker.mode = "400"
    r.run()
    assert marks(r) == ["refused"]
    assert any("refused 000001-runtime-log.rec for good (HTTP 400" in s and "project is disabled" in s
               for s in said)


@pytest.mark.parametrize("mode", ["500", "garbage", "silent"])
def test_a_broken_tracker_loses_nothing_and_is_retried_with_back_off(tmp_path: Path, tracker: Tracker,
                                                                     mode: str) -> None:
    clock, said = Clock(), list[str]()
    r = reporter_for(tmp_path, tracker, clock, said)
    add_crashes(r, 2)
    tracker.mode = mode
    assert r.run(forever=False) == 0
    assert marks(r) == ["", ""] and any("could not send 000001-runtime-log.rec" in s for s in said)
    assert "next try in 5 s" in said[-1]
    tracker.mode = "ok"
    assert r.run() == 2 and marks(r) == ["sent", "sent"]


def test_a_huge_answer_is_read_only_in_part(tmp_path: Path, tracker: Tracker) -> None:
    clock, said = Clock(), list[str]()
    r = reporter_for(tmp_path, tracker, clock, said)
    add_crashes(r, 1)
    tracker.mode = "huge"
    assert r.run() == 1


def test_the_days_bound_holds_the_rest_until_tomorrow(tmp_path: Path, tracker: Tracker) -> None:
    clock, said = Clock(), list[str]()
    r = reporter_for(tmp_path, tracker, clock, said, Limits(reports=2))
    add_crashes(r, 3)
    assert r.run(forever=False) == 2
    assert marks(r) == ["sent", "sent", ""] and "today's bound reached (2 reports" in said[-1]
    assert r.run() == 3  # the clock passes midnight
    assert clock.slept[-2] <= 86400


def test_nobody_listening_is_a_network_error_said_once_per_try(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    answer = send.post(f"http://127.0.0.1:{port}/api/1/envelope/", {}, b"x", seconds=2)
    assert answer.status == 0 and "Connection refused" in answer.error


def test_the_release_is_the_image_that_crashed_not_the_one_sending() -> None:
    record = records.Record({"kind": "reset", "image": "1.3 (0123456789ab)", "event-id": "f" * 32}, b"")
    got = event.build(record, MACHINE)
    assert got["release"] == "1.3" and got["tags"]["build_id"] == "0123456789ab"
    assert event.build(records.Record({"kind": "reset"}, b""), MACHINE)["release"] == MACHINE.release


def test_tls_is_verified_against_the_ca_given_and_refused_otherwise(tmp_path: Path) -> None:
    import ssl
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tracker",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tracker = Tracker()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tracker.server.socket = context.wrap_socket(tracker.server.socket, server_side=True)
    try:
        url = f"https://127.0.0.1:{tracker.server.server_address[1]}/api/9/envelope/"
        assert send.post(url, {}, b"x", ca_file=str(cert), seconds=5).ok  # a private tracker's CA
        refused = send.post(url, {}, b"x", seconds=5)  # the system's CAs do not know it
        assert refused.status == 0 and "CERTIFICATE_VERIFY_FAILED" in refused.error, refused
        assert len(tracker.received) == 1
    finally:
        tracker.close()


def test_an_oom_kill_and_a_watchdogs_dump_are_events_too(tmp_path: Path) -> None:
    oom = record_of(tmp_path, b"core: allocating\n", ended="killed by the kernel's OOM killer (signal 9, SIGKILL)")
    got = event.build(oom, MACHINE)
    assert got["message"]["formatted"] == "core killed by the kernel's OOM killer (signal 9, SIGKILL)"
    assert "exception" not in got
    # A hung core dumped by the software watchdog: SIGABRT to a process with faulthandler on.
    hung = ("import faulthandler, os, signal, threading, time\n"
            "lock = threading.Lock(); lock.acquire()\n"
            "def stuck():\n    lock.acquire()\n"
            "threading.Thread(target=stuck, name='worker', daemon=True).start()\n"
            "faulthandler.enable(); time.sleep(0.2); os.kill(os.getpid(), signal.SIGABRT)\n")
    done = subprocess.run([sys.executable, "-c", hung], capture_output=True, check=False)
    log = b"".join(b"core: " + line + b"\n" for line in done.stderr.splitlines())
    got = event.build(record_of(tmp_path, log, ended="killed by signal 6 (SIGABRT)"), MACHINE)
    (value,) = got["exception"]["values"]
    assert (value["type"], value["value"]) == ("SIGABRT", "Aborted")
    threads = got["threads"]["values"]
    assert len(threads) == 2 and any(f["function"] == "stuck" for t in threads for f in t["stacktrace"]["frames"])
