"""Inside a booted image: the machine a Python program expects (test_machine.py has the
unit tests). The matrix core tries each item and says ok or what failed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.harness.machine import Machine

pytestmark = pytest.mark.qemu

CHECKS = ("loopback", "hostname", "user", "environment", "timezone", "certificates", "processes", "interpreter")


def test_the_core_finds_the_machine_a_python_program_expects(test_raw: Path, qemu_ready: None, tmp_path: Path,
                                                            log_dir: Path) -> None:
    m = Machine(test_raw, tmp_path, name="machine-env", log_dir=log_dir)
    m.esp_write("/appliance-test/action", b"machine")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: host name matrix; loopback up", 30)  # make test-image sets HOSTNAME=matrix
        end = m.expect(r"matrix core: machine: (\d+) checks, (\d+) failed", 240)
        m.power_cut()
    console = m.log_path.read_text(errors="replace")
    results = dict(re.findall(r"matrix core: machine: (\w+): (ok|FAILED)", console))
    failures = re.findall(r"matrix core: machine: \w+: FAILED: [^\r\n]*", console)
    assert results == {name: "ok" for name in CHECKS}, failures
    assert end.group(1) == str(len(CHECKS)) and end.group(2) == "0"
    assert re.search(r"machine: hostname: ok: matrix is 127\.0\.1\.1, localhost is 127\.0\.0\.1", console)
