from pathlib import Path
from typing import Any

from appliance.esp import records
from appliance.esp.files import MountedEsp
from appliance.esp.history import History


def big_disk() -> int:
    return 1 << 40


def folder(path: Path, **kw: Any) -> History:
    """A history whose directory is the folder ``path`` (the ESP's root, in a test)."""
    return History(MountedEsp(str(path)), "/", **kw)


def where(h: History, entry: Any) -> Path:
    return Path(h.where(entry))


def test_keeps_the_last_n_records(tmp_path: Path) -> None:
    h = folder(tmp_path / "h", max_records=8, max_bytes=1 << 30, free_floor=0, free_bytes=big_disk)
    for i in range(20):
        entry, why = h.add("runtime-log", f"crash {i}".encode())
        assert entry is not None, why
    entries = h.entries()
    assert [e.sequence for e in entries] == list(range(13, 21))
    assert h.read(entries[-1]).payload == b"crash 19"


def test_byte_cap_bounds_the_history_but_keeps_the_newest(tmp_path: Path) -> None:
    h = folder(tmp_path, max_records=100, max_bytes=10_000, free_floor=0, free_bytes=big_disk)
    for _ in range(10):
        h.add("runtime-log", b"x" * 3000)
    assert sum(e.size for e in h.entries()) <= 10_000
    h.add("runtime-log", b"y" * 50_000)  # larger than the cap on its own: still kept
    assert [h.read(e).payload[:1] for e in h.entries()] == [b"y"]


def test_free_space_floor_removes_oldest_then_refuses(tmp_path: Path) -> None:
    free = {"bytes": 10_000}
    h = folder(tmp_path, max_records=100, max_bytes=1 << 30, free_floor=5_000,
                free_bytes=lambda: free["bytes"])
    first, _ = h.add("runtime-log", b"a" * 1000)
    assert first is not None
    free["bytes"] = 5_500  # below the floor once a record is written: the oldest goes first
    entry, why = h.add("runtime-log", b"b" * 1000)
    assert entry is None and "keeps at least" in why
    assert h.entries() == []


def test_interrupted_writes_are_cleaned_and_torn_records_reported(tmp_path: Path) -> None:
    h = folder(tmp_path, free_floor=0, free_bytes=big_disk)
    entry, _ = h.add("runtime-log", b"payload" * 100)
    assert entry is not None
    (tmp_path / "000009-runtime-log.rec.tmp").write_bytes(b"half")
    where(h, entry).write_bytes(where(h, entry).read_bytes()[:-10])
    entries = h.entries()
    assert not (tmp_path / "000009-runtime-log.rec.tmp").exists()
    assert "torn" in h.read(entries[0]).problem


def test_new_records_continue_the_sequence(tmp_path: Path) -> None:
    h = folder(tmp_path, free_floor=0, free_bytes=big_disk)
    (tmp_path / "000041-runtime-log.rec").write_bytes(records.encode("runtime-log", b"old"))
    entry, _ = h.add("runtime-log", b"new")
    assert entry is not None and entry.sequence == 42


def test_a_directory_stuffed_with_record_files_drains_in_bounded_steps(tmp_path: Path, monkeypatch: object) -> None:
    import os

    from appliance.esp import history as history_mod
    d = tmp_path / "h"
    d.mkdir()
    for i in range(1, 1001):
        (d / f"{i:06d}-runtime-log.rec").write_bytes(records.encode("runtime-log", b"old"))
    (d / "000999-runtime-log.rec.tmp").write_bytes(b"half")
    now = [0.0]

    def clock() -> float:  # each look at the clock: 10 ms; the budget: 1 s
        now[0] += 0.01
        return now[0]

    h = folder(d, max_records=4, max_bytes=1 << 30, free_floor=0, free_bytes=big_disk, clock=clock)
    stats = []
    real_size = h.files.size

    def counting_size(path: str) -> int:
        stats.append(path)
        return real_size(path)

    monkeypatch.setattr(h.files, "size", counting_size)  # type: ignore[attr-defined]
    entries = h.entries()
    assert len(stats) == len(entries) == 4 + history_mod.LOOK_BEYOND  # only the newest names are looked at
    assert entries[-1].sequence == 1000
    left = sorted(os.listdir(d))
    assert "000999-runtime-log.rec.tmp" not in left  # temporary files go first
    assert 1000 - len(left) == 98 and h.overfull == 1000 - 12 - 98  # what 1 s allowed; said by the init
    entry, _ = h.add("runtime-log", b"new")
    assert entry is not None and entry.sequence == 1001
    while h.overfull:
        h.entries()
    h.add("runtime-log", b"newer")
    assert sorted(os.listdir(d))[-1] == "001002-runtime-log.rec" and len(os.listdir(d)) == 4


def test_torn_and_corrupt_records_are_found_at_the_next_addition(tmp_path: Path) -> None:
    h = folder(tmp_path, max_records=8, max_bytes=1 << 30, free_floor=0, free_bytes=big_disk)
    first, _ = h.add("runtime-log", b"a whole record" * 100)
    second, _ = h.add("runtime-log", b"another")
    assert first is not None and second is not None and h.problems == []
    data = where(h, first).read_bytes()
    where(h, first).write_bytes(data[:-10])  # cut short, as a power cut without the rename would
    where(h, second).write_bytes(where(h, second).read_bytes() + b"junk")
    h.add("runtime-log", b"third")
    assert h.problems == [f"{where(h, first)}: torn record: {len(b'a whole record') * 100 - 10} of 1400 bytes "
                          "present", f"{where(h, second)}: corrupt record: 4 bytes beyond its length"]
    assert [records.decode(where(h, e).read_bytes()).ok for e in h.entries()] == [False, False, True]


def test_a_mark_renames_the_record_and_survives_a_new_listing(tmp_path: Path) -> None:
    h = folder(tmp_path, free_floor=0, free_bytes=big_disk)
    entry, _ = h.add("runtime-log", b"crash")
    assert entry is not None and entry.mark == ""
    sent = h.mark(entry, "sent")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000001-runtime-log.sent.rec"]
    assert h.entries() == [sent] and sent.mark == "sent"
    assert h.read(sent).payload == b"crash"
    later, _ = h.add("runtime-log", b"again")  # the sequence goes on past a marked record
    assert later is not None and later.sequence == 2


def test_rotation_removes_reported_records_before_unsent_ones_and_counts_the_unsent(tmp_path: Path) -> None:
    h = folder(tmp_path, max_records=3, max_bytes=1 << 30, free_floor=0, free_bytes=big_disk)
    for i in range(3):
        h.add("runtime-log", f"crash {i}".encode())
    _, second, third = h.entries()
    h.mark(second, "sent")
    h.mark(third, "refused")
    h.add("runtime-log", b"crash 3")  # one must go: the sent one, not the older unsent one
    assert [(e.sequence, e.mark) for e in h.entries()] == [(1, ""), (3, "refused"), (4, "")]
    assert h.lost_unsent == 0
    h.add("runtime-log", b"crash 4")  # then the refused one
    assert [e.sequence for e in h.entries()] == [1, 4, 5]
    h.add("runtime-log", b"crash 5")  # nothing reported is left: the oldest unsent goes, counted
    assert [e.sequence for e in h.entries()] == [4, 5, 6]
    assert h.lost_unsent == 1


def test_the_free_floor_also_takes_reported_records_first(tmp_path: Path) -> None:
    def free() -> int:  # an ESP of 8,000 bytes: room for three records of 1,124 bytes above the floor
        return 8_000 - sum(p.stat().st_size for p in tmp_path.iterdir())
    h = folder(tmp_path, max_records=100, max_bytes=1 << 30, free_floor=4_000, free_bytes=free)
    for _ in range(3):
        h.add("runtime-log", b"x" * 1000)
    assert len(h.entries()) == 3
    h.mark(h.entries()[1], "sent")
    h.add("runtime-log", b"y" * 1000)  # one record must go to keep the floor
    assert [(e.sequence, e.mark) for e in h.entries()] == [(1, ""), (3, ""), (4, "")]
    assert h.lost_unsent == 0
