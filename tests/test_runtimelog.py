import os
from pathlib import Path

from appliance.init.runtimelog import (
    NOT_RECORDED,
    RuntimeLog,
    Tagger,
    how_it_ended,
    printable_lines,
    read_previous,
)


def test_tagger_marks_every_line_across_chunks() -> None:
    t = Tagger(b"core: ")
    out = t(b"Trace") + t(b"back\n  File") + t(b' "x"\n') + t(b"\n")
    assert out == b'core: Traceback\ncore:   File "x"\ncore: \n'


def test_log_is_written_as_it_happens_with_sources(tmp_path: Path) -> None:
    p = tmp_path / "runtime.log"
    log = RuntimeLog(str(p), cap=4096)
    log.core_output(b"partial")
    assert p.read_bytes() == b"core: partial"  # on disk before any flush
    log.init_line("core ended: exited with status 3")
    log.close()
    assert p.read_bytes() == b"core: partial\ninit: core ended: exited with status 3\n"
    assert how_it_ended(p.read_bytes()) == "exited with status 3"


def test_cap_keeps_beginning_and_end_with_a_marker(tmp_path: Path) -> None:
    p = tmp_path / "runtime.log"
    log = RuntimeLog(str(p), cap=4096)
    log.core_output(b"FIRST LINE\n")
    for i in range(2000):
        log.core_output(f"line {i}\n".encode())
    log.core_output(b"Fatal Python error: Segmentation fault\n")
    log.init_line("core ended: killed by signal 11 (SIGSEGV)")
    log.close()
    data = p.read_bytes()
    assert len(data) <= 4096 + 200
    assert data.startswith(b"core: FIRST LINE\n")
    assert b"bytes cut here" in data
    assert data.endswith(b"core: Fatal Python error: Segmentation fault\n"
                         b"init: core ended: killed by signal 11 (SIGSEGV)\n")
    assert how_it_ended(data) == "killed by signal 11 (SIGSEGV)"


def test_discard_empties_the_log(tmp_path: Path) -> None:
    p = tmp_path / "runtime.log"
    log = RuntimeLog(str(p))
    log.core_output(b"x\n")
    log.discard()
    log.close()
    assert p.stat().st_size == 0


def test_write_errors_turn_the_log_off_without_raising(tmp_path: Path) -> None:
    log = RuntimeLog(str(tmp_path / "runtime.log"), cap=4096)
    os.close(log.fd)
    log.fd = os.open("/dev/full", os.O_WRONLY)
    log.core_output(b"data\n")
    log.flush()
    assert log.error is not None
    log.core_output(b"more\n")  # still no exception
    log.close()


def test_previous_log_huge_garbage_is_read_bounded(tmp_path: Path) -> None:
    p = tmp_path / "runtime.log"
    p.write_bytes(os.urandom(3 << 20))
    content, size = read_previous(str(p), cap=1 << 20)
    assert size == 3 << 20
    assert len(content) < (1 << 20) + 200
    assert b"skipped" in content
    assert how_it_ended(content) == NOT_RECORDED
    lines = printable_lines(content, limit=64 * 1024)
    assert sum(len(line) for line in lines) < 64 * 1024 * 4
    assert all(line.isprintable() or "\t" in line for line in lines)


def test_printable_lines_escape_control_characters_and_keep_the_end() -> None:
    lines = printable_lines(b"ok\n\x1b[2Jclear\x07\nend\n")
    assert lines == ["ok", "\\x1b[2Jclear\\x07", "end"]
    long = b"".join(b"%05d\n" % i for i in range(20000))
    shown = printable_lines(long, limit=600)
    assert shown[0].startswith("[... ") and shown[-1] == "19999"
