"""What is left to send, and sending it: oldest first, spaced, within a day's bound,
honouring the tracker's rate limits and backing off while it is away.

The history on the ESP is the queue: a record is unsent until the tracker answered 2xx
(then it is marked sent), or refused it for good (a 4xx other than 429: marked refused,
and the tracker's words said). What must survive a reboot (today's count, a rate limit's
end) lives in a small state file beside the history.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import NamedTuple

from appliance.esp import kvfile, layout
from appliance.esp.history import REFUSED, SENT, Entry, History
from appliance.report import event, send
from appliance.report.dsn import Dsn

DAY_REPORTS = 32  # ChromeOS's crash_sender: 32 reports a day
DAY_BYTES = 24 * 1024 * 1024  # and 24 MB
SPACING = 0.5  # seconds between two reports of a backlog
BACKOFF_FIRST, BACKOFF_MAX = 5.0, 600.0  # a tracker that is away: 5 s, 10 s, ... 10 min
RATE_LIMIT_DEFAULT = 60.0  # a 429 that says for how long nowhere
RATE_LIMIT_MAX = 24 * 3600.0


class Limits(NamedTuple):
    reports: int = DAY_REPORTS
    size: int = DAY_BYTES


DEFAULT_LIMITS = Limits()


class DayState(NamedTuple):
    day: str = ""  # YYYY-MM-DD (UTC) the counts are of
    sent: int = 0
    size: int = 0  # bytes sent
    wait_until: float = 0.0  # a rate limit's end (the wall clock)
    host: str = ""  # the machine that sends, for reports sent from elsewhere (make dumps SEND=)
    machine_id: str = ""

    @classmethod
    def parse(cls, data: bytes) -> DayState:
        raw = kvfile.parse(data)
        return cls(raw.get("day", ""), int(raw.get("sent", "0")), int(raw.get("bytes", "0")),
                   float(raw.get("wait-until", "0")), raw.get("host", ""), raw.get("machine-id", ""))

    def render(self) -> bytes:
        return kvfile.render({"day": self.day, "sent": str(self.sent), "bytes": str(self.size),
                              "wait-until": f"{self.wait_until:.0f}", "host": self.host,
                              "machine-id": self.machine_id})


def rate_limit_seconds(answer: send.Answer, now: float) -> float:
    """How long a 429 (or a rate-limit header on any answer) says to wait."""
    waits = []
    for entry in answer.rate_limits.split(","):
        seconds, _, rest = entry.strip().partition(":")
        categories = rest.partition(":")[0]
        if seconds.strip().isdigit() and (not categories or "error" in categories.split(";")):
            waits.append(float(seconds))
    if not waits and answer.retry_after:
        value = answer.retry_after.strip()
        if value.isdigit():
            waits.append(float(value))
        else:
            try:
                waits.append(email.utils.parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError, IndexError):
                pass
    if not waits and answer.status == 429:
        waits.append(RATE_LIMIT_DEFAULT)
    return min(max(waits, default=0.0), RATE_LIMIT_MAX)


class Reporter:
    """Sends the history's unsent records to one tracker; says what it does."""

    def __init__(self, history: History, dsn: Dsn, machine: event.Machine, say: Callable[[str], None],
                 ca_file: str | None = None, source: event.SourceReader | None = None,
                 limits: Limits = DEFAULT_LIMITS, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 post: Callable[..., send.Answer] = send.post,
                 tell: Callable[[str, int], None] = lambda state, pending: None) -> None:
        self.history = history
        self.files = history.files
        self.dsn = dsn
        self.machine = machine
        self.say = say
        self.ca_file = ca_file
        self.source = source
        self.limits = limits
        self.clock = clock
        self.sleep = sleep
        self.post = post
        self.tell = tell  # (sending | waiting | done, records pending): for the init's way out
        self.sent = 0  # this run
        self.refused = 0
        self.failures = 0  # exchanges in a row that got no usable answer

    def pending(self) -> list[Entry]:
        """The unsent records, oldest first (nothing is removed: the init owns rotation)."""
        out = []
        for sequence, kind, mark, path in self.history.named():
            if not mark:
                out.append(Entry(path, sequence, kind, 0))
        return out

    def load_state(self) -> DayState:
        try:
            return DayState.parse(self.files.read(layout.REPORTS_STATE, 4096))
        except FileNotFoundError:
            return DayState()
        except (OSError, ValueError) as e:
            self.say(f"crash reports: the state file {self.files.where(layout.REPORTS_STATE)} is unreadable "
                     f"({e}): starting the day's count afresh")
            return DayState()

    def save_state(self, state: DayState) -> None:
        try:
            self.files.write(layout.REPORTS_STATE, state.render())
        except OSError as e:
            self.say(f"crash reports: could not save {self.files.where(layout.REPORTS_STATE)}: {e}")

    def today(self, state: DayState) -> DayState:
        day = time.strftime("%Y-%m-%d", time.gmtime(self.clock()))
        if state.day != day:
            state = DayState(day, 0, 0, state.wait_until)
        return state._replace(host=self.machine.host, machine_id=self.machine.machine_id)

    def run(self, forever: bool = True) -> int:
        """Send until nothing is pending (then return how many were sent), or, with
        ``forever`` false, until the first wait (a rate limit, a back-off, the day's bound)."""
        state = self.today(self.load_state())
        while True:
            pending = self.pending()
            if not pending:
                self.tell("done", 0)
                self.say(self.summary(0))
                return self.sent
            now = self.clock()
            wait = state.wait_until - now
            if state.sent >= self.limits.reports or state.size >= self.limits.size:
                wait = max(wait, 86400 - now % 86400)  # until midnight UTC
                self.say(f"crash reports: today's bound reached ({state.sent} reports, {state.size >> 10} KiB): "
                         f"{len(pending)} pending until tomorrow (UTC)")
            elif wait > 0:
                self.say(f"crash reports: {self.dsn.host} asked to wait: {len(pending)} pending, "
                         f"next try in {wait:.0f} s")
            if wait > 0:
                self.tell("waiting", len(pending))
                if not forever:
                    return self.sent
                self.sleep(min(wait, 3600.0))
                state = self.today(state)
                continue
            self.tell("sending", len(pending))
            state = self.send_one(pending[0], len(pending), state)
            if self.failures:
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(self.failures - 1, 16))
                self.tell("waiting", len(pending))
                self.say(f"crash reports: {len(pending)} pending; next try in {delay:g} s")
                if not forever:
                    return self.sent
                self.sleep(delay)
            else:
                self.sleep(SPACING)
            state = self.today(state)

    def send_one(self, entry: Entry, pending: int, state: DayState) -> DayState:
        name = entry.path.rsplit("/", 1)[-1]
        try:
            record = self.history.read(entry)
        except OSError as e:
            self.failures += 1
            self.say(f"crash reports: could not read {self.files.where(entry.path)}: {e}")
            return state
        built = event.build(record, self.machine, self.source, name)
        if record.problem:
            built["extra"]["record_problem"] = record.problem
        body = event.envelope(built, self.dsn, self.clock())
        headers = {"Content-Type": "application/x-sentry-envelope",
                   "X-Sentry-Auth": self.dsn.auth(self.machine.client),
                   "User-Agent": self.machine.client}
        answer = self.post(self.dsn.envelope_url, headers, body, self.ca_file)
        now = self.clock()
        limit = rate_limit_seconds(answer, now)
        if limit > 0:
            state = state._replace(wait_until=now + limit)
        if answer.ok:
            self.failures = 0
            self.mark(entry, SENT)
            self.sent += 1
            state = state._replace(sent=state.sent + 1, size=state.size + len(body))
            self.say(f"crash reports: sent {name} to {self.dsn.host} (event {built['event_id']})")
        elif answer.status == 429:
            self.failures = 0
            self.say(f"crash reports: {self.dsn.host} is rate-limiting (HTTP 429): {name} waits {limit:.0f} s")
        elif 400 <= answer.status < 500:
            self.failures = 0
            self.mark(entry, REFUSED)
            self.refused += 1
            self.say(f"crash reports: {self.dsn.host} refused {name} for good (HTTP {answer.status}: "
                     f"{' '.join(answer.body.split())[:200]}): marked refused")
        else:
            self.failures += 1
            why = f"HTTP {answer.status}" if answer.status else answer.error
            self.say(f"crash reports: could not send {name} to {self.dsn.host}: {why}")
        self.save_state(state)
        return state

    def mark(self, entry: Entry, mark: str) -> None:
        try:
            self.history.mark(entry, mark)
        except OSError as e:  # sent again later: the tracker stores one event per id
            self.say(f"crash reports: could not mark {self.files.where(entry.path)} {mark}: {e}")

    def summary(self, pending: int) -> str:
        refused = f", {self.refused} refused" if self.refused else ""
        return f"crash reports: {self.sent} sent to {self.dsn.host}{refused} ({pending} pending)"
