"""Start the core, then one loop: read its stderr, reap every child, forward signals.

The core is started with fork/exec here, not subprocess: a Popen object may call
waitpid on its own pid (at garbage collection, or from the next Popen), and a status
taken that way is lost to the reaper (CPython then reports exit status 0 for a
crash). One loop reaps every pid with waitpid(-1) and keeps the core's status.
"""

from __future__ import annotations

import errno
import os
import selectors
import time
from collections.abc import Callable
from typing import NamedTuple

from appliance.init import sigs
from appliance.init.sigs import signal
from appliance.init.watchdog import SoftWatchdog

# Signals PID 1 passes on to the core. TERM, INT (Ctrl-Alt-Del) and PWR also start the
# shutdown grace period, after which the core is killed.
FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGTERM, signal.SIGALRM, signal.SIGWINCH, signal.SIGCONT, signal.SIGPWR)
SHUTDOWN = (signal.SIGTERM, signal.SIGINT, signal.SIGPWR)
HANDLED = (*FORWARDED, signal.SIGCHLD)
FLUSH_INTERVAL = 0.2
READ_CHUNK = 256 * 1024  # at most this much of the core's stderr per turn of the loop
FINAL_READ = 16 * 1024 * 1024
WATCHDOG_FD = 3  # where the core finds its software watchdog's pipe
HEALTHY = b"healthy"  # a word on that pipe: the core says it is healthy (an update on trial is committed)
SCREEN = b"screen"  # another: the core draws its own user interface; the init stops drawing (screen.py)
WORDS = (HEALTHY, SCREEN)  # not pings
DUMP_GRACE = 3.0  # seconds a hung core gets to write its threads' tracebacks before SIGKILL


class SpawnError(Exception):
    pass


def spawn(argv: list[str], env: dict[str, str], stderr_fd: int, cgroup_procs: str | None = None,
          watchdog_fd: int | None = None) -> int:
    """fork + exec ``argv`` in a new session with fd 2 = ``stderr_fd`` (and fd 3 =
    ``watchdog_fd``, when given); exec errors raise here."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe-ish work, then exec
        try:
            os.close(err_r)
            signal.set_wakeup_fd(-1)
            for sig in (*HANDLED, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.setsid()
            if cgroup_procs:
                try:
                    with open(cgroup_procs, "w") as f:
                        f.write("0")
                except OSError:
                    pass
            os.dup2(stderr_fd, 2)
            if watchdog_fd is not None:
                os.dup2(watchdog_fd, WATCHDOG_FD)
            os.execve(argv[0], argv, env)
        except BaseException as e:  # noqa: BLE001 - anything here must reach the parent
            try:
                os.write(err_w, f"{e}".encode(errors="replace"))
            finally:
                os._exit(127)
    os.close(err_w)
    try:
        msg = b""
        while chunk := os.read(err_r, 4096):
            msg += chunk
    finally:
        os.close(err_r)
    if msg:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        raise SpawnError(f"could not start {argv[0]}: {msg.decode(errors='replace')}")
    return pid


class Outcome(NamedTuple):
    status: int  # as waitpid returns it
    note: str  # what the init did, if anything ("killed after the shutdown grace period")
    shutdown_requested: bool
    signals_forwarded: int


class Duties:
    """What the init does while the core runs. The loop calls each at its time; here each
    does nothing, so a caller (or a test) names only what it needs."""

    def output(self, data: bytes) -> None:
        """Bytes the core wrote to its stderr."""

    def flush(self) -> None:
        """Every FLUSH_INTERVAL, and once the core has ended: make the runtime log durable."""

    def say(self, text: str) -> None:
        """A line for the console."""

    def healthy(self) -> None:
        """Once: the core said it is healthy, or has run ``healthy_after`` seconds."""

    def kill_rest(self) -> None:
        """Kill what the core left running (its control group)."""

    def screen_taken(self) -> None:
        """The core wrote SCREEN: it draws on the screen from now on."""

    def due(self) -> float | None:
        """When (on the loop's clock) ``work`` wants to run next; None: not at all."""
        return None

    def work(self, now: float) -> None:
        """Called once ``due`` has come (deferred drivers, petting the hardware watchdogs)."""


class Supervisor:
    """Runs until the core has exited; reaps all children meanwhile."""

    def __init__(self, core_pid: int, stderr_fd: int, duties: Duties, *, grace: float = 10.0,
                 healthy_after: float | None = None, watchdog: tuple[int, SoftWatchdog] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core_pid = core_pid
        self.stderr_fd = stderr_fd
        self.duties = duties
        self.grace = grace
        self.healthy_after = healthy_after
        self.healthy_said = False  # the core wrote HEALTHY to its pipe to the init
        self.watchdog = watchdog  # (the read end of the core's pipe, its state)
        self.clock = clock
        self.status: int | None = None
        self.reaped_others = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._old_handlers: dict[int, object] = {}
        self._old_wakeup = -1

    # -- signals -------------------------------------------------------------------
    def install_signals(self) -> None:
        """Route the handled signals into the wake-up pipe; the loop reads their numbers."""
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in HANDLED:
            self._old_handlers[sig] = signal.signal(sig, lambda s, f: None)

    def restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._old_wakeup)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    # -- reaping -------------------------------------------------------------------
    def reap(self) -> None:
        """Collect every exited child; keep the core's status."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            if pid == self.core_pid:
                self.status = status
            else:
                self.reaped_others += 1

    def _read_stderr(self, limit: int = READ_CHUNK) -> bool:
        """Read at most ``limit`` bytes of what is there, without blocking; False at end
        of file. Bounded: a core writing without pause must not keep the loop from its
        flushes, timers and signals (it did: a power cut then found an empty log)."""
        done = 0
        while done < limit:
            try:
                data = os.read(self.stderr_fd, min(65536, limit - done))
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            except OSError:
                return False
            if not data:
                return False
            done += len(data)
            self.duties.output(data)
        return True

    def run(self) -> Outcome:
        os.set_blocking(self.stderr_fd, False)
        sel = selectors.DefaultSelector()
        sel.register(self.stderr_fd, selectors.EVENT_READ, "stderr")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        started = self.clock()
        kill_at: float | None = None
        kill_note = kill_say = ""
        shutdown = False
        killed_note = ""
        forwarded = 0
        healthy_pending = self.healthy_after is not None
        next_flush = started + FLUSH_INTERVAL
        stderr_open = True
        if self.watchdog is not None:
            os.set_blocking(self.watchdog[0], False)
            sel.register(self.watchdog[0], selectors.EVENT_READ, "watchdog")
        try:
            while True:
                self.reap()
                if self.status is not None:
                    break
                now = self.clock()
                deadlines = [next_flush]
                if kill_at is not None:
                    deadlines.append(kill_at)
                if healthy_pending and self.healthy_after is not None:
                    deadlines.append(started + self.healthy_after)
                if (due := self.duties.due()) is not None:
                    deadlines.append(due)
                if self.watchdog is not None and (deadline := self.watchdog[1].deadline()) is not None:
                    deadlines.append(deadline)
                timeout = max(0.0, min(deadlines) - now)
                for key, _ in sel.select(timeout):
                    if key.data == "stderr":
                        if not self._read_stderr():
                            sel.unregister(self.stderr_fd)
                            stderr_open = False
                    elif key.data == "watchdog":
                        self._read_watchdog(sel)
                    else:
                        for signum in self._read_signals():
                            if signum == signal.SIGCHLD:
                                continue
                            self._forward(signum)
                            forwarded += 1
                            if signum in SHUTDOWN and not shutdown:
                                shutdown = True
                                kill_at = self.clock() + self.grace
                                kill_note = f"killed by the init after the {self.grace:g} s shutdown grace period"
                                kill_say = (f"the core did not exit within {self.grace:g} s of the shutdown "
                                            "request: killing it")
                                self.duties.say(f"shutdown requested ({sigs.name(signum)}): the core has "
                                         f"{self.grace:g} s to exit")
                now = self.clock()
                if self.watchdog is not None and self.watchdog[1].expired(now) and self.status is None:
                    dog = self.watchdog[1]
                    dog.fired = True
                    self.duties.say(f"software watchdog: no ping from the core for {dog.timeout:g} s: dumping its "
                             f"threads (SIGABRT), then killing it")
                    killed_note = f"the software watchdog fired: no ping for {dog.timeout:g} s"
                    self._forward(signal.SIGABRT)
                    if kill_at is None or kill_at > now + DUMP_GRACE:
                        kill_at, kill_note = now + DUMP_GRACE, killed_note
                        kill_say = f"the core did not end within {DUMP_GRACE:g} s of SIGABRT: killing it"
                if kill_at is not None and now >= kill_at and self.status is None:
                    self.duties.say(kill_say)
                    self._kill(signal.SIGKILL)
                    killed_note = kill_note
                    kill_at = None
                if healthy_pending and self.healthy_after is not None and (
                        self.healthy_said or now - started >= self.healthy_after):
                    healthy_pending = False
                    if self.healthy_said:
                        self.duties.say(f"the core says it is healthy ({now - started:.1f} s after it started)")
                    self.duties.healthy()
                if (due := self.duties.due()) is not None and now >= due:
                    self.duties.work(now)
                if now >= next_flush:
                    self.duties.flush()
                    next_flush = now + FLUSH_INTERVAL
            if stderr_open:  # the core's last words; bounded, since orphans may hold the pipe
                self._read_stderr(limit=FINAL_READ)
            self.duties.kill_rest()
            self.reap()
            self.duties.flush()
        finally:
            sel.close()
        assert self.status is not None
        return Outcome(self.status, killed_note, shutdown, forwarded)

    def _read_signals(self) -> bytes:
        try:
            return os.read(self._wake_r, 1024)
        except (BlockingIOError, InterruptedError):
            return b""

    def _read_watchdog(self, sel: selectors.BaseSelector) -> None:
        assert self.watchdog is not None
        fd, dog = self.watchdog
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the core closed it: no more pings can come; the watchdog stays armed
            sel.unregister(fd)
            return
        words = data.split()
        if HEALTHY in words:  # the core says it is healthy: not a ping, unless it wrote more
            self.healthy_said = True
        if SCREEN in words:
            self.duties.screen_taken()
        if words and all(w in WORDS for w in words):
            return
        note = dog.feed(data, self.clock())
        if note:
            self.duties.say(note)

    def _forward(self, signum: int) -> None:
        try:
            os.kill(self.core_pid, signum)
        except ProcessLookupError:
            pass

    def _kill(self, signum: int) -> None:
        try:
            os.kill(self.core_pid, signum)
        except OSError as e:
            if e.errno != errno.ESRCH:
                self.duties.say(f"could not kill the core: {e}")
        self.duties.kill_rest()
