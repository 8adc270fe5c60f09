from pathlib import Path

from appliance.esp import backoff
from tests.helpers import esp_folder, layout, on_esp


def test_delays_double_from_one_second_to_the_cap() -> None:
    seq = [backoff.delay(n) for n in range(0, 12)]
    assert seq[:10] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert seq[10:] == [300, 300]
    assert backoff.delay(10_000) == 300


def test_state_round_trip(tmp_path: Path) -> None:
    esp, p = esp_folder(tmp_path), on_esp(tmp_path, layout.BACKOFF)
    assert backoff.load(esp) == (0, "")
    backoff.save(esp, 5)
    assert backoff.load(esp) == (5, "")
    assert p.read_bytes() == b"failures = 5\n"
    assert not p.with_name(p.name + ".tmp").exists()


def test_garbage_state_counts_as_zero_and_is_reported(tmp_path: Path) -> None:
    esp, p = esp_folder(tmp_path), on_esp(tmp_path, layout.BACKOFF)
    p.parent.mkdir()
    for junk in (b"\x00\xff garbage", b"[]", b"failures = -3\n", b"failures = x\n", b"failures = \xc2\xb2\n", b""):
        p.write_bytes(junk)
        n, problem = backoff.load(esp)
        assert n == 0 and "unreadable" in problem


def test_make_dirs_creates_each_level(tmp_path: Path) -> None:
    from appliance.esp.fsutil import make_dirs
    make_dirs(str(tmp_path / "a/b/c"))
    assert (tmp_path / "a/b/c").is_dir()
    make_dirs(str(tmp_path / "a/b/c"))  # again: nothing to do, no error
