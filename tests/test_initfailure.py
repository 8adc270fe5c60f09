"""A bug in a best-effort step is said and kept, and the boot goes on to the core."""

from pathlib import Path

from appliance.esp import lastboot
from appliance.init import initfailure


def test_a_failing_step_is_said_kept_in_the_efi_variable_and_the_boot_goes_on(tmp_path: Path) -> None:
    said: list[str] = []
    ran: list[str] = []
    failures = initfailure.Failures(said.append)

    def hostile() -> None:
        raise MemoryError

    failures.run("finding and mounting the ESP", hostile)
    failures.run("accounting for the previous boot", lambda: ran.append("next step"))
    assert ran == ["next step"]
    assert said[0].startswith("BUG: the init failed while finding and mounting the ESP:\nTraceback")
    assert "MemoryError" in said[0] and said[0].endswith("(going on to the core without it)")
    failures.keep(None, root=str(tmp_path))  # no runtime log: the EFI variable
    text, problem = initfailure.load(str(tmp_path))
    assert problem == "" and text is not None and b"while finding and mounting the ESP" in text
    assert initfailure.summary(text) == "MemoryError"
    # The next boot's reason: the variable wins over a state file from an older boot.
    state = lastboot.State(False, "core", "exited with status 1")
    assert lastboot.reason(state, init_failure="MemoryError") == ("failure of the init (MemoryError)", False)


def test_with_a_runtime_log_the_failures_go_there(tmp_path: Path) -> None:
    lines: list[str] = []
    failures = initfailure.Failures(lambda s: None)
    def broken() -> None:
        print(1 // 0)

    failures.run("starting the runtime log", broken)
    failures.keep(lines.append, root=str(tmp_path))
    assert len(lines) == 1 and "ZeroDivisionError" in lines[0]
    assert initfailure.load(str(tmp_path)) == (None, "")


def test_nothing_failed_nothing_kept(tmp_path: Path) -> None:
    initfailure.Failures(lambda s: None).keep(None, root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
