"""The supervisor as PID 1 runs it, here with the test process as a child subreaper:
orphans re-parent to us exactly as they would to PID 1."""

import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from appliance.init.kernel import Kernel
from appliance.init.sigs import name as signal_name
from appliance.init.supervise import FORWARDED, Outcome, SpawnError, Supervisor, spawn
from tests.helpers import Recorder


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> None:
    Kernel().set_child_subreaper()


def zombies() -> list[int]:
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] == "Z" and int(fields[1]) == me:
                found.append(int(entry))
    return found


class Run:
    def __init__(self, tmp_path: Path, code: str, grace: float = 10.0) -> None:
        script = tmp_path / "core.py"
        script.write_text(textwrap.dedent(code))
        self.stderr = bytearray()
        r, w = os.pipe2(os.O_CLOEXEC)
        self.pid = spawn([sys.executable, str(script)], dict(os.environ), w)
        os.close(w)
        self.duties = Recorder(self.stderr)
        self.sup = Supervisor(self.pid, r, self.duties, grace=grace)
        self.r = r

    def wait_for(self, text: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            assert time.monotonic() < deadline, f"never saw {text!r}: {bytes(self.stderr)!r}"
            time.sleep(0.01)

    def run(self) -> Outcome:
        self.sup.install_signals()
        try:
            return self.sup.run()
        finally:
            self.sup.restore_signals()
            os.close(self.r)


ORPHANS = """
    import os, sys, time
    for i in range(100):
        pid = os.fork()
        if pid == 0:
            if os.fork() == 0:
                time.sleep((i % 10) / 50)
                os._exit(i % 7)
            os._exit(0)
        os.waitpid(pid, 0)
    time.sleep({delay})
    sys.stderr.write("done\\n")
    sys.exit({code})
"""


def test_a_hundred_orphans_leave_no_zombie(tmp_path: Path) -> None:
    run = Run(tmp_path, ORPHANS.format(delay=0.8, code=42))
    outcome = run.run()
    assert os.WIFEXITED(outcome.status) and os.WEXITSTATUS(outcome.status) == 42
    assert run.sup.reaped_others == 100
    assert zombies() == []
    assert b"done" in run.stderr


@pytest.mark.parametrize("code", [0, 1, 3, 77, 255])
def test_core_status_is_exact_while_orphans_die_around_it(tmp_path: Path, code: int) -> None:
    run = Run(tmp_path, ORPHANS.format(delay=0.05, code=code))
    outcome = run.run()
    assert os.WIFEXITED(outcome.status) and os.WEXITSTATUS(outcome.status) == code
    # Orphans still sleeping when the core left: reap until no child is left at all.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        run.sup.reap()
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            break
        time.sleep(0.05)
    assert zombies() == [] and run.sup.reaped_others == 100


def test_signal_death_is_exact(tmp_path: Path) -> None:
    run = Run(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    outcome = run.run()
    assert os.WIFSIGNALED(outcome.status) and os.WTERMSIG(outcome.status) == signal.SIGSEGV


def test_every_ordinary_signal_reaches_the_core(tmp_path: Path) -> None:
    names = [signal_name(s) for s in FORWARDED]
    run = Run(tmp_path, f"""
        import signal, sys, time
        want = {names!r}
        got = []
        def handler(n, f):
            got.append(signal.Signals(n).name)
        for name in want:
            signal.signal(getattr(signal, name), handler)
        sys.stderr.write("ready\\n")
        while len(got) < len(want):
            time.sleep(0.01)
        sys.stderr.write("got " + " ".join(got) + "\\n")
    """)

    def send() -> None:
        run.wait_for(b"ready")
        for s in FORWARDED:
            os.kill(os.getpid(), s)
            time.sleep(0.05)

    t = threading.Thread(target=send)
    t.start()
    outcome = run.run()
    t.join()
    assert os.WIFEXITED(outcome.status) and os.WEXITSTATUS(outcome.status) == 0, bytes(run.stderr)
    got = bytes(run.stderr).split(b"got ", 1)[1].split()
    assert sorted(g.decode() for g in got) == sorted(names)
    assert outcome.signals_forwarded == len(names) and outcome.shutdown_requested


def test_a_core_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    run = Run(tmp_path, """
        import signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.stderr.write("ready\\n")
        while True:
            time.sleep(1)
    """, grace=0.5)

    def send() -> None:
        run.wait_for(b"ready")
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=send)
    t.start()
    started = time.monotonic()
    outcome = run.run()
    t.join()
    assert os.WIFSIGNALED(outcome.status) and os.WTERMSIG(outcome.status) == signal.SIGKILL
    assert "grace period" in outcome.note and outcome.shutdown_requested
    assert time.monotonic() - started >= 0.5


def test_stderr_is_captured_up_to_a_hard_exit(tmp_path: Path) -> None:
    run = Run(tmp_path, "import os\nos.write(2, b'last words\\n' * 1000)\nos._exit(7)\n")
    outcome = run.run()
    assert os.WEXITSTATUS(outcome.status) == 7
    assert bytes(run.stderr) == b"last words\n" * 1000


def test_exec_failure_is_reported_at_spawn(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="could not start /nonexistent"):
        spawn(["/nonexistent/core"], {}, 2)
    assert zombies() == []


def test_a_flooding_core_does_not_starve_flushes_or_signals(tmp_path: Path) -> None:
    """A core that writes to stderr without pause: the loop still flushes and still
    forwards a shutdown request (it once read until the pipe was empty: never)."""
    flushes: list[float] = []
    run = Run(tmp_path, """
        import signal, sys
        signal.signal(signal.SIGTERM, lambda n, f: sys.exit(9))
        while True:
            sys.stderr.write("flood " * 20 + "\\n")
    """)

    class SlowConsole(Recorder):
        def flush(self) -> None:
            flushes.append(time.monotonic())

        def output(self, data: bytes) -> None:  # as the serial console is in the guest
            run.stderr.extend(data)
            time.sleep(0.002)
    run.sup.duties = SlowConsole()

    def send() -> None:
        run.wait_for(b"flood")
        time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # a starved loop never forwards it: end the test, not hang it
        try:
            os.kill(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    t = threading.Thread(target=send, daemon=True)
    t.start()
    outcome = run.run()
    assert os.WIFEXITED(outcome.status) and os.WEXITSTATUS(outcome.status) == 9, "SIGTERM never reached the core"
    assert len(flushes) >= 3  # every 0.2 s during the flood
