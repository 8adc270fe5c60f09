"""The crash matrix: the core dies in every way a program can, and each dump survives.

Each case boots the test image with an action written onto its ESP, lets the core
die, stops QEMU once the init has synced and says it reboots, reads the runtime log
off the ESP, boots again, and checks that the next boot prints that dump framed by
the init's markers and archives exactly it.
"""

import re
from typing import NamedTuple

import pytest

from appliance.esp import layout, records
from tests.helpers import MatrixMachine, act

pytestmark = pytest.mark.qemu


class Case(NamedTuple):
    action: str
    ended: str  # regex: the cause in "core ended: ..."
    dump: tuple[str, ...]  # regexes the dump must contain, in order (lines as on the ESP)
    failure: bool = True  # False: a planned restart, not an uncorrectable error


CASES = [
    Case("exit3", r"exited with status 3", ()),
    Case("raise", r"exited with status 1", (
        r"core: uncaught exception in the main thread:",
        r'core:     raise RuntimeError\("matrix core: raised on purpose in the main thread"\)',
        r"core: RuntimeError: matrix core: raised on purpose in the main thread")),
    Case("thread", r"exited with status 70", (
        r"core: uncaught exception in thread 'matrix-worker': the core exits with status 70",
        r"core: ValueError: matrix core: raised on purpose in a worker thread")),
    Case("segv", r"killed by signal 11 \(SIGSEGV\)", (
        r"core: Fatal Python error: Segmentation fault",
        r"core: Thread 0x[0-9a-f]+",  # the bystander thread, then the one that crashed
        r"core: Current thread 0x[0-9a-f]+",
        r"core:   File \"/usr/lib/appliance/core/__main__.py\", line \d+ in main")),
    Case("abort", r"killed by signal 6 \(SIGABRT\)", (r"core: Fatal Python error: Aborted",)),
    Case("fatal", r"killed by signal 6 \(SIGABRT\)", (
        r"core: Fatal Python error: .*matrix core: fatal error on purpose",)),
    Case("oswrite", r"exited with status 7", (r"core: matrix core: last words written straight to fd 2",)),
    Case("sigkill", r"killed by signal 9 \(SIGKILL\)", ()),
    Case("oom", r"killed by the kernel's OOM killer \(signal 9, SIGKILL\)", ()),
    # A shutdown request is a planned restart, even when the core must be killed for it.
    Case("ignore-term", r"killed by signal 9 \(SIGKILL\); killed by the init after the 10 s shutdown grace period",
         (), failure=False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.action for c in CASES])
def test_crash_is_dumped_and_survives_the_reboot(matrix: MatrixMachine, case: Case) -> None:
    m = matrix(f"matrix-{case.action}")
    act(m, case.action.encode())
    with m:
        m.wait_boot(timeout=120)
        m.expect(rf"matrix core: action {re.escape(case.action)}", 60)
        if case.action == "ignore-term":
            m.expect(r"init: shutdown requested \(SIGTERM\): the core has 10 s to exit", 30)
        m.expect(rf"init: core ended: {case.ended} at", 90)
        if case.failure:
            m.expect(r"init: the appliance encountered an uncorrectable error and must be restarted", 10)
        m.expect(r"init: rebooting at", 30)
    # Between the boots: the dump is on the ESP, read without booting.
    log = m.esp_read(layout.RUNTIME_LOG)
    text = log.decode(errors="replace")
    assert re.search(rf"^init: core ended: {case.ended}$", text, re.M), text[-2000:]
    for pattern in case.dump:
        assert re.search(rf"^{pattern}", text, re.M), f"{pattern!r} not in the runtime log:\n{text[-3000:]}"

    with m:  # boots again from the same disk and firmware variables
        m.wait_boot(timeout=120)
        why = "core crash" if case.failure else "requested restart"
        m.expect(rf"init: previous boot ended: {why} \({case.ended}\)" if case.failure
                 else r"init: previous boot ended: requested restart \(shutdown requested\)", 60)
        m.expect(rf"init: ===== previous boot's runtime log: begin \({len(log)} bytes; core ended: {case.ended}\)", 60)
        for pattern in case.dump:
            m.expect(rf"init: \| {pattern}", 10)
        m.expect(rf"init: \| init: core ended: {case.ended}", 10)
        end = m.expect(r"init: ===== previous boot's runtime log: end \(archived as /esp(/appliance/history/\S+)\)", 10)
        m.expect(r"matrix core: ready", 60)
        m.power_cut()
    rec = records.decode(m.esp_read(end.group(1)))
    assert rec.ok, rec.problem
    assert rec.payload == log  # the record is exactly what was on the ESP
    assert m.boots == 2


def test_exit_zero_reboots_without_a_report(matrix: MatrixMachine) -> None:
    m = matrix("matrix-exit0")
    act(m, b"exit0")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: core ended: exited with status 0 \(requested restart\) at", 60)
        m.expect(r"init: rebooting at", 30)
        m.wait_boot(timeout=120)
        m.expect(r"init: previous boot ended: requested restart \(exited with status 0 \(requested restart\)\)", 60)
        m.expect(r"matrix core: ready", 60)
        m.power_cut()
    console = m.log_path.read_text(errors="replace")
    assert "previous boot's runtime log" not in console
    assert "uncorrectable error" not in console
    assert m.esp_list(layout.HISTORY_DIR) == []
