"""The soak's checks between cuts (the soak itself is `make soak`, not part of `make test`)."""

import sqlite3
from pathlib import Path

from appliance.tools.soak import check_backoff, check_repair, data_after_cut, lost_records
from tests.test_init_data import stick_with_data


def test_a_record_may_go_only_by_rotation() -> None:
    before = {"000001-runtime-log.rec": "a", "000002-runtime-log.rec": "b"}
    rotated = {f"00000{i}-runtime-log.rec": "x" for i in (3, 4, 5, 6)}
    assert lost_records(before, rotated, bound=4) == []
    assert lost_records(before, {"000002-runtime-log.rec": "b", "000003-reset.rec": "c"}, bound=4) == [
        "000001-runtime-log.rec"]  # gone with room to spare: lost
    assert lost_records(before, {**before, "000002-runtime-log.rec": "changed"}, bound=4) == [
        "000002-runtime-log.rec"]  # a whole record that changed is lost too


def test_backoff_counter_checks() -> None:
    assert check_backoff(None, 3) == ""
    assert check_backoff(b"failures = 2\n", 3) == ""
    assert "more than the 3 boots" in check_backoff(b"failures = 9\n", 3)
    assert "unreadable" in check_backoff(b"\0\0garbage", 3)


def test_clusters_lost_at_a_cut_must_be_checked_at_the_next_boot() -> None:
    checked = "init: the FAT on /dev/vda1 was not unmounted cleanly: checking it\r\n"
    assert check_repair(True, "init: appliance init 1.0\r\n" + checked) == ""
    assert "not checked" in check_repair(True, "init: appliance init 1.0\r\ninit: core started: pid 9 at\r\n")
    assert check_repair(False, "init: appliance init 1.0\r\n") == ""


def data_stick(tmp_path: Path, ids: list[int]) -> Path:
    """A disk with a data partition whose database holds ``ids`` (the data core's table)."""
    tmp_path.mkdir()
    files = tmp_path / "files"
    files.mkdir()
    db = sqlite3.connect(files / "commits.sqlite")
    db.execute("CREATE TABLE commits (id INTEGER PRIMARY KEY, at REAL, payload BLOB)")
    db.executemany("INSERT INTO commits VALUES (?, 0, x'00')", [(i,) for i in ids])
    db.commit()
    db.close()
    return stick_with_data(tmp_path, files=files)


def test_the_data_soak_reads_the_database_off_a_cut_disk(tmp_path: Path) -> None:
    assert data_after_cut(data_stick(tmp_path / "a", [1, 2, 3, 4, 5]), tmp_path / "a/work") == ("", 5, 5, False)
    problem, count, top, _ = data_after_cut(data_stick(tmp_path / "b", [1, 2, 4]), tmp_path / "b/work")
    assert (count, top) == (3, 4) and "a gap" in problem
