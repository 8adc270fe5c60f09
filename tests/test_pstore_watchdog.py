"""Kernel panics from pstore, why the previous boot ended, and the watchdogs' logic."""

import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from appliance.esp import lastboot
from appliance.init import exitstatus, pstore, watchdog
from appliance.init.kernel import Kernel
from appliance.init.supervise import Outcome, Supervisor, spawn
from tests.helpers import Recorder, esp_folder, layout, on_esp

# --- pstore ----------------------------------------------------------------------------------

def test_parts_of_a_panic_are_put_back_in_reading_order(tmp_path: Path) -> None:
    # efi-pstore: Part1 holds the newest text (the panic itself), Part2 what came before.
    (tmp_path / "dmesg-efi_pstore-172000000001001").write_bytes(
        b"Panic#1 Part1\n<0>Kernel panic - not syncing: sysrq triggered crash\n")
    (tmp_path / "dmesg-efi_pstore-172000000002001").write_bytes(
        b"Panic#1 Part2\n<12>matrix core: about to panic the kernel, token abc\n")
    (tmp_path / "pmsg-ramoops-0").write_bytes(b"user space's last words\n")
    dumps, problems = pstore.collect(str(tmp_path))
    assert problems == []
    assert [d.kind for d in dumps] == ["kernel-panic", "pstore-pmsg"]
    panic = dumps[0]
    assert panic.reason == "Panic"
    assert panic.payload == (b"Panic#1, parts 1-2 of the kernel log at the panic\n"
                             b"<12>matrix core: about to panic the kernel, token abc\n"
                             b"<0>Kernel panic - not syncing: sysrq triggered crash\n")
    assert len(panic.files) == 2
    assert pstore.erase(panic) == []
    assert sorted(os.listdir(tmp_path)) == ["pmsg-ramoops-0"]


def test_a_missing_part_is_said_and_oopses_are_their_own_kind(tmp_path: Path) -> None:
    (tmp_path / "dmesg-efi_pstore-1").write_bytes(b"Oops#2 Part3\nolder\n")
    (tmp_path / "dmesg-efi_pstore-2").write_bytes(b"Oops#2 Part1\nnewest\n")
    (tmp_path / "dmesg-efi_pstore-3").write_bytes(b"no header at all\n")
    dumps, _ = pstore.collect(str(tmp_path))
    assert [d.kind for d in dumps] == ["kernel-oops", "kernel-dump"]
    assert dumps[0].payload.startswith(b"Oops#2, parts 1-3 of the kernel log at the oops (parts 2 missing)\n")
    assert dumps[0].payload.endswith(b"older\nnewest\n")


def test_only_a_whole_header_line_counts_as_one() -> None:
    assert pstore._part_header(b"Panic_x#12 Part3\ntext\n") == ("Panic_x", 12, 3, b"text\n")
    for bad in (b"Panic#1 Part1", b"#1 Part1\n", b"Panic#x Part1\n", b"Panic#1 Part\n", b"Pa nic#1 Part1\n",
                b"Panic#1 Part1 \n", b""):
        assert pstore._part_header(bad) is None, bad


def test_no_pstore_is_nothing(tmp_path: Path) -> None:
    assert pstore.collect(str(tmp_path / "absent")) == ([], [])


# --- why the previous boot ended ------------------------------------------------------------------

def test_state_round_trip_and_each_reason(tmp_path: Path) -> None:
    path = esp_folder(tmp_path)
    assert lastboot.load(path) == (None, "")
    assert lastboot.reason(None) == (lastboot.UNKNOWN, False)
    lastboot.save_running(path)
    state, _ = lastboot.load(path)
    assert state == lastboot.State(running=True)
    assert lastboot.reason(state) == (lastboot.NOT_RECORDED, True)
    assert lastboot.reason(state, watchdog_reset="watchdog0: i6300ESB timer") == (
        "watchdog reset (watchdog0: i6300ESB timer): the machine hung", True)
    assert lastboot.reason(state, panic="Panic, kept by pstore") == ("kernel panic (Panic, kept by pstore)", True)
    lastboot.save_ended(path, "requested", "exited with status 0 (requested restart)")
    state, _ = lastboot.load(path)
    assert lastboot.reason(state) == ("requested restart (exited with status 0 (requested restart))", False)
    lastboot.save_ended(path, "core", "killed by signal 11 (SIGSEGV)")
    assert lastboot.reason(lastboot.load(path)[0]) == ("core crash (killed by signal 11 (SIGSEGV))", False)
    lastboot.save_ended(path, "init", "a failure of the init")
    assert lastboot.reason(lastboot.load(path)[0]) == ("failure of the init (a failure of the init)", False)
    lastboot.save_ended(path, "core", "a cause\nover two lines")  # one line in the file, nothing else lost
    assert lastboot.load(path) == (lastboot.State(False, "core", "a cause over two lines"), "")
    # What the boot said of itself (and nothing else) is kept for the next boot's records.
    about = {"image": "2026.11.29-3f2a (3f2a0c1b9d8e)", "secure-boot": "on (lockdown: integrity)", "other": "x"}
    lastboot.save_running(path, about)
    assert lastboot.load(path) == (lastboot.State(True, about={k: about[k] for k in ("image", "secure-boot")}), "")
    lastboot.save_ended(path, "core", "exited with status 1", {"secure-boot": "off", "image": "", "ended-at": "1.8e9"})
    assert lastboot.load(path)[0] == lastboot.State(False, "core", "exited with status 1",
                                                    {"secure-boot": "off", "ended-at": "1.8e9"})
    on_esp(tmp_path, layout.LAST_BOOT).write_bytes(b"\x00garbage")
    state, problem = lastboot.load(path)
    assert state is None and "unreadable" in problem


# --- watchdogs --------------------------------------------------------------------------------------

def test_ioctl_numbers_are_linux_watchdog_h() -> None:
    # From <linux/watchdog.h> as the kernel's headers expand them on x86-64.
    assert (watchdog.WDIOC_GETSUPPORT, watchdog.WDIOC_GETBOOTSTATUS, watchdog.WDIOC_KEEPALIVE,
            watchdog.WDIOC_SETTIMEOUT, watchdog.WDIOC_GETTIMEOUT) == (
        0x80285700, 0x80045702, 0x80045705, 0xC0045706, 0x80045707)


def test_devices_are_listed_in_number_order(tmp_path: Path) -> None:
    for name in ("watchdog10", "watchdog2", "watchdog0", "other", "watchdog", "watchdogx"):
        (tmp_path / name).mkdir()
    assert watchdog.devices(str(tmp_path)) == ["watchdog0", "watchdog2", "watchdog10"]
    assert watchdog.devices(str(tmp_path / "none")) == []


def test_soft_watchdog_arms_at_the_first_ping_and_takes_a_timeout() -> None:
    dog = watchdog.SoftWatchdog(30)
    assert dog.deadline() is None and not dog.expired(1e9)
    assert dog.feed(b"1", now=100.0) == "software watchdog: armed by the core (30 s)"
    assert dog.deadline() == 130.0 and not dog.expired(129.9) and dog.expired(130.0)
    assert dog.feed(b"ping timeout=2.5\n", now=110.0) == "software watchdog: timeout set to 2.5 s by the core"
    assert dog.deadline() == 112.5
    assert dog.feed(b"timeout=0\n", now=111.0) == ""  # nonsense is ignored; still a ping
    assert dog.deadline() == 113.5
    for nonsense in (b"timeout=-3", b"timeout=inf", b"timeout=nan", b"timeout=1.5.2", b"timeout=", b"xtimeout=9"):
        assert watchdog.timeout_setting(nonsense) is None, nonsense
    assert watchdog.timeout_setting(b"timeout=7 timeout=x timeout=.5\n") == 0.5


DEADLOCKED_CORE = """
    import faulthandler, os, sys, threading, time
    faulthandler.enable(all_threads=True)
    dog = int(os.environ["APPLIANCE_WATCHDOG_FD"])
    os.write(dog, b"timeout=1\\n")
    a, b = threading.Lock(), threading.Lock()
    def first_a_then_b():
        with a:
            time.sleep(0.2)
            with b:
                pass
    def first_b_then_a():
        with b:
            time.sleep(0.2)
            with a:
                pass
    threads = [threading.Thread(target=first_a_then_b), threading.Thread(target=first_b_then_a)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
"""


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> None:
    Kernel().set_child_subreaper()


def supervise_with_watchdog(tmp_path: Path, code: str, dog: watchdog.SoftWatchdog, said: list[str],
                            stderr: bytearray, duties: Recorder | None = None, **kw: Any) -> Outcome:
    """Run ``code`` as the core, with its pipe to the init, under a Supervisor."""
    script = tmp_path / "core.py"
    script.write_text(textwrap.dedent(code))
    r, w = os.pipe2(os.O_CLOEXEC)
    dog_r, dog_w = os.pipe2(os.O_CLOEXEC)
    pid = spawn([sys.executable, str(script)], {**os.environ, "APPLIANCE_WATCHDOG_FD": "3"}, w,
                watchdog_fd=dog_w)
    os.close(w)
    os.close(dog_w)
    sup = Supervisor(pid, r, duties or Recorder(stderr, said), watchdog=(dog_r, dog), **kw)
    sup.install_signals()
    try:
        return sup.run()
    finally:
        sup.restore_signals()
        os.close(r)
        os.close(dog_r)


def test_a_core_that_stops_pinging_dumps_its_threads_and_is_killed(tmp_path: Path) -> None:
    stderr = bytearray()
    said: list[str] = []
    outcome = supervise_with_watchdog(tmp_path, DEADLOCKED_CORE, watchdog.SoftWatchdog(30), said, stderr)
    cause = exitstatus.decode(outcome.status, note=outcome.note)
    assert cause.signal == signal.SIGABRT, cause
    assert cause.describe() == "killed by signal 6 (SIGABRT); the software watchdog fired: no ping for 1 s"
    assert "software watchdog: timeout set to 1 s by the core" in said
    assert "software watchdog: no ping from the core for 1 s: dumping its threads (SIGABRT), then killing it" in said
    text = stderr.decode()
    assert text.count("in first_a_then_b") == 1 and text.count("in first_b_then_a") == 1, text
    assert "Fatal Python error: Aborted" in text


HEALTHY_CORE = """
import os, time
fd = int(os.environ["APPLIANCE_WATCHDOG_FD"])
os.write(fd, b"healthy\\n")  # not a ping: the software watchdog stays unarmed
time.sleep(1.5)
"""


def test_a_core_saying_healthy_is_healthy_at_once_and_arms_no_watchdog(tmp_path: Path) -> None:
    said: list[str] = []
    duties = Recorder(said=said)
    dog = watchdog.SoftWatchdog(0.5)  # would fire during the core's sleep, were it armed
    outcome = supervise_with_watchdog(tmp_path, HEALTHY_CORE, dog, said, bytearray(), duties, healthy_after=600)
    healthy = [True] * duties.healthy_calls
    assert exitstatus.decode(outcome.status).describe() == "exited with status 0 (requested restart)"
    assert healthy == [True] and not dog.armed
    assert any(s.startswith("the core says it is healthy (") for s in said), said


SCREEN_CORE = """
import os, sys, time
sys.path.insert(0, os.environ["APPLIANCE_PYTHON"])
from appliance import screen
assert screen.take() == ""  # this machine has no screen: APPLIANCE_SCREEN is empty
time.sleep(1.5)
"""


def test_a_core_taking_the_screen_tells_the_init_and_arms_no_watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     repo: Path) -> None:
    class Taken(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.taken = 0

        def screen_taken(self) -> None:
            self.taken += 1

    monkeypatch.setenv("APPLIANCE_PYTHON", str(repo / "python"))
    monkeypatch.setenv("APPLIANCE_SCREEN", "")
    duties = Taken()
    dog = watchdog.SoftWatchdog(0.5)  # would fire during the core's sleep, were it armed
    outcome = supervise_with_watchdog(tmp_path, SCREEN_CORE, dog, duties.said, bytearray(), duties)
    assert exitstatus.decode(outcome.status).describe() == "exited with status 0 (requested restart)", duties.stderr
    assert duties.taken == 1 and not dog.armed and duties.healthy_calls == 0
