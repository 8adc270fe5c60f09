import signal

import pytest

from appliance.init.exitstatus import decode
from appliance.init.sigs import name as signal_name


@pytest.mark.parametrize("code", range(256))
def test_every_exit_code_is_exact(code: int) -> None:
    cause = decode(code << 8)
    assert cause.code == code
    assert cause.signal is None
    assert cause.shell_code == code
    assert cause.clean == (code == 0)
    assert f"status {code}" in cause.describe()


@pytest.mark.parametrize("sig", range(1, signal.NSIG))
def test_every_signal_is_128_plus_n(sig: int) -> None:
    cause = decode(sig)
    assert cause.signal == sig
    assert cause.code is None
    assert cause.shell_code == 128 + sig
    assert not cause.clean
    assert f"signal {sig} ({signal_name(sig)})" in cause.describe()


def test_core_dump_flag() -> None:
    cause = decode(signal.SIGSEGV | 0x80)
    assert cause.core_dumped and cause.signal == signal.SIGSEGV
    assert "core dumped" in cause.describe()


def test_oom_only_for_sigkill() -> None:
    assert decode(signal.SIGKILL, oom=True).describe().startswith("killed by the kernel's OOM killer")
    assert not decode(signal.SIGTERM, oom=True).oom
    assert not decode(3 << 8, oom=True).oom


def test_clean_exit_says_requested_restart_and_note_is_kept() -> None:
    assert decode(0).describe() == "exited with status 0 (requested restart)"
    assert decode(signal.SIGKILL, note="killed after grace").describe().endswith("; killed after grace")


def test_signal_names_are_the_signal_modules() -> None:
    for n in range(1, signal.NSIG):
        try:
            want = signal.Signals(n).name
        except ValueError:
            want = f"SIG{n}"
        assert signal_name(n) == want
