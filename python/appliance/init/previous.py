"""The previous boot's leavings: why it ended, and what it left behind.

Kernel panics and oopses from pstore, the init's own failure from its EFI variable,
the runtime log on the ESP: each is shown on the console, framed, and archived in the
crash history; pstore's and the variable's copies are erased once kept. Then this
boot is marked as running, so that the next one can tell a planned end from a cut.
"""

from __future__ import annotations

from collections.abc import Callable

from appliance import efivars
from appliance.esp import lastboot, layout
from appliance.init import initfailure, pstore
from appliance.init.hardware import Hardware
from appliance.init.persistence import Persistence
from appliance.init.root import Root
from appliance.init.runtimelog import how_it_ended, printable_lines, read_previous
from appliance.init.screen import Crash

TAIL = 40  # the dump's last lines kept for the screen's banner (it shows those that fit)
# Which record's end the banner shows, the first there is: the panic, then the init's failure.
TAIL_ORDER = ("kernel", "init-failure", "runtime-log", "reset")


class PreviousBoot:
    def __init__(self, persist: Persistence, say: Callable[[str], None], root: Root,
                 record: Callable[[str], None] | None = None) -> None:
        """``record``: for the dumps' lines, which only the full record (the serial
        console) shows; the screen gets ``crash`` instead."""
        self.persist = persist
        self.say = say
        self.record = record or say
        self.root = root
        self.ended = ""  # why it ended, as said on the console
        self.unplanned = False
        self.log_kept = False  # its runtime log could not be archived: it stays on the ESP
        self.tails: dict[str, tuple[tuple[str, ...], str]] = {}  # kind -> (its last lines, where it is kept)

    @property
    def crash(self) -> Crash | None:
        """What the screen's banner says, when the previous boot did not end as planned."""
        ended = self.ended
        if not ended or ended.startswith((lastboot.REQUESTED, "unknown")):
            return None
        title = ("THE PREVIOUS BOOT DID NOT END CLEANLY" if ended == lastboot.NOT_RECORDED
                 else "THE PREVIOUS BOOT CRASHED")
        kind = next((k for k in TAIL_ORDER if k in self.tails), "")
        lines, where = self.tails.get(kind, ((), ""))
        # For a person: the core's lines without their tag, and no rows spent on a traceback's ^~~~ marks.
        tail = tuple(line.removeprefix("core: ") for line in lines
                     if line.removeprefix("core: ").strip(" ~^") or not line.strip())
        where = where.removeprefix("archived as ")
        if not where:
            where = "not kept (no writable ESP)" if self.persist.history is None else "the ESP's crash history"
        return Crash(title, ended, tail, f"{where} (from another PC: make dumps DEV=/dev/sdX)")

    def account(self, hardware: Hardware, about: dict[str, str]) -> None:
        """Say why the previous boot ended; show and archive what it left; then mark this
        boot (described by ``about``) as running."""
        persist = self.persist
        dumps, problems = pstore.collect(self.root(pstore.PSTORE_DIR))  # shown even without an ESP
        for p in problems:
            self.say(f"pstore: {p}")
        panic = next((f"{d.reason}, kept by pstore" for d in dumps if d.kind.startswith("kernel-")), "")
        init_failure, problem = initfailure.load(self.root(efivars.EFIVARS))
        if problem:
            self.say(problem)
        state: lastboot.State | None = None
        if persist.files is not None:
            state, problem = lastboot.load(persist.files)
            if problem:
                self.say(problem)
        reset_by = ""
        if state is not None and state.running and not panic:
            # Cut short with no panic: a hang the hardware watchdog ended shows in its
            # driver's boot status (the watchdogs are armed before this step).
            reset_by = hardware.reset_by()
        if persist.files is None and not panic and not init_failure:
            self.ended, unplanned = "unknown: persistence is off", False
        else:
            self.ended, unplanned = lastboot.reason(state, panic, reset_by,
                                                    initfailure.summary(init_failure) if init_failure else "")
        self.unplanned = unplanned
        self.say(f"previous boot ended: {self.ended}")
        meta = {"boot-ended": self.ended}
        if state is not None:
            meta.update(state.about)  # the previous boot's image and Secure Boot, kept in its state file
        archived = False
        for dump in dumps:
            archived |= self.show_pstore_dump(dump, meta)
        if init_failure:
            archived |= self.show_init_failure(init_failure, meta)
        archived |= self.show_runtime_log(meta)
        if unplanned and not archived and persist.history is not None:
            _, where = persist.archive("reset", f"previous boot ended: {self.ended}\n".encode(), meta)
            self.tails["reset"] = ((), where)
        persist.save_running(about)

    def show_pstore_dump(self, dump: pstore.Dump, meta: dict[str, str]) -> bool:
        what = dump.kind.replace("-", " ")
        self.record(f"===== {what} from the previous boot (pstore): begin ({len(dump.payload)} bytes) =====")
        lines = printable_lines(dump.payload)
        for line in lines:
            self.record(f"| kernel: {line}")
        archived, where = self.persist.archive(dump.kind, dump.payload, {**meta, "reason": dump.reason})
        if archived:  # erased only once kept: the firmware's variable store must not fill
            for p in pstore.erase(dump):
                self.say(f"pstore: {p}")
        else:
            where += "; left in pstore"
        self.record(f"===== {what} from the previous boot: end ({where}) =====")
        if dump.kind.startswith("kernel-"):
            self.tails.setdefault("kernel", (tuple(lines[-TAIL:]), where))
        return archived

    def show_init_failure(self, text: bytes, meta: dict[str, str]) -> bool:
        """The init's failure kept in the EFI variable: shown, archived, then erased (also
        when it cannot be archived: it was shown, and a new failure would replace it)."""
        self.record(f"===== the init's failure in the previous boot (EFI variable): begin ({len(text)} bytes) =====")
        lines = printable_lines(text)
        for line in lines:
            self.record(f"| init: {line}")
        archived, where = self.persist.archive("init-failure", text, meta)
        problem = initfailure.erase(self.root(efivars.EFIVARS))
        if problem:
            self.say(problem)
        self.record(f"===== the init's failure in the previous boot: end ({where}) =====")
        self.tails["init-failure"] = (tuple(lines[-TAIL:]), where)
        return archived

    def show_runtime_log(self, meta: dict[str, str]) -> bool:
        files = self.persist.files
        if files is None:
            return False
        path = files.where(layout.RUNTIME_LOG)
        try:
            content, size = read_previous(path, self.persist.config.runtime_log_cap)
        except FileNotFoundError:
            return False
        except OSError as e:
            self.say(f"could not read the previous runtime log {path}: {e}")
            return False
        if size == 0:
            return False
        ended = how_it_ended(content)
        self.record(f"===== previous boot's runtime log: begin ({size} bytes; core ended: {ended}) =====")
        lines = printable_lines(content)
        for line in lines:
            self.record(f"| {line}")
        archived, where = self.persist.archive("runtime-log", content, {"ended": ended, "size": str(size), **meta})
        if archived:
            try:
                files.delete(layout.RUNTIME_LOG)
            except OSError as e:
                where += f" (could not remove {path}: {e})"
        else:
            where += "; the log stays on the ESP"
            self.log_kept = True
        self.record(f"===== previous boot's runtime log: end ({where}) =====")
        self.tails["runtime-log"] = (tuple(lines[-TAIL:]), where)
        return archived
