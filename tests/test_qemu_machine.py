"""Inside a booted image: the machine a Python program expects (test_machine.py has the
unit tests). The matrix core tries each item and says ok or what failed."""

from __future__ import annotations

import re

import pytest

from tests.helpers import MatrixMachine, act

pytestmark = pytest.mark.qemu

READY = r"matrix core: ready"
CHECKS = ("loopback", "hostname", "user", "environment", "timezone", "certificates", "processes", "interpreter",
          "dependencies", "file_formats")


def test_the_core_finds_the_machine_a_python_program_expects(matrix: MatrixMachine) -> None:
    m = matrix("machine-env", disk_size=2 << 30)  # a stick bigger than the image: a data partition
    act(m, b"machine")
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
    assert re.search(r"machine: dependencies: ok: markupsafe from /usr/local/lib/python3\.13/dist-packages/markupsafe, "
                     r"_speedups\.cpython-313-x86_64-linux-gnu\.so", console)
    assert re.search(r"machine: file_formats: ok: sqlite3 3\.\d+\.\d+, dbm \(dbm\.sqlite3\), shelve, .* in /data",
                     console)


def test_a_crash_inside_a_dependency_shows_the_library_frame_with_its_source(matrix: MatrixMachine) -> None:
    m = matrix("library-crash")
    act(m, b"library-crash")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"matrix core: crashing in a library", 60)
        m.wait_boot(timeout=120)
        m.expect(r"init: ===== previous boot's runtime log: begin", 60)
        # The standard library's frames: their source is in /usr/lib/python313.zip, read through
        # the module's loader (build/stdlibzip.py).
        stdlib = m.expect(r"init: \| core:   File \"/usr/lib/python3[^\"\r\n]*/json/decoder\.py\", "
                          r"line \d+, in raw_decode\r*\ninit: \| core:     ([^\r\n]*)\r*\n", 30)
        frame = m.expect(r"init: \| core:   File \"/usr/local/lib/python3\.13/dist-packages/markupsafe/__init__\.py\", "
                         r"line \d+, in __mod__\r*\ninit: \| core:     ([^\r\n]*)\r*\n", 30)
        m.expect(READY, 60)
        m.power_cut()
    assert frame.group(1).strip(), "the library frame has no source line"
    assert "scan_once(" in stdlib.group(1), f"the standard library's frame shows {stdlib.group(1)!r}"
