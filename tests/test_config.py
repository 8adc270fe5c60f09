from pathlib import Path

from appliance import initconf as config
from appliance.esp import kvfile


def test_load_baked_config_and_switches(tmp_path: Path) -> None:
    p = tmp_path / "init.conf"
    p.write_text("# written by the build\ncore = /usr/lib/appliance/core/x.py\nmodules = vfat  nls_utf8\n\n"
                 "runtime_log_cap = 4096\nesp_wait_seconds = 2.5\ncore_memory_max =\n")
    cfg, problems = config.load(str(p), cmdline="console=ttyS0 appliance.hold appliance.x=2 quiet")
    assert problems == []
    assert cfg.core.endswith("x.py") and cfg.modules == ("vfat", "nls_utf8") and cfg.runtime_log_cap == 4096
    assert cfg.esp_wait_seconds == 2.5 and cfg.core_memory_max is None
    assert cfg.hold and cfg.switches["x"] == "2"


def test_every_setting_round_trips_through_the_file_format(tmp_path: Path) -> None:
    want = config.Config(core="/c/main.py", modules=("a", "b"), runtime_log_cap=1, history_records=9,
                         history_bytes=3, esp_free_floor=4, esp_wait_seconds=0.5, shutdown_grace_seconds=7.0,
                         core_memory_max="64M", profile="debug", healthy_after_seconds=5.0,
                         backoff_first_seconds=2.0, backoff_max_seconds=8.0, core_watchdog_seconds=3.0,
                         hw_watchdog_seconds=11)
    text = {k: " ".join(v) if isinstance(v, tuple) else str(v) for k, v in want._asdict().items() if k != "switches"}
    p = tmp_path / "init.conf"
    p.write_bytes(kvfile.render(text))
    assert config.load(str(p)) == (want, [])


def test_garbage_config_falls_back_to_defaults(tmp_path: Path) -> None:
    p = tmp_path / "init.conf"
    for junk in (b"\x00\xff", b"[1, 2]", b"runtime_log_cap = 5\nhistory_records = many\n", b"= 3\n"):
        p.write_bytes(junk)
        cfg, problems = config.load(str(p))
        assert len(problems) == 1 and "using defaults" in problems[0] and cfg == config.Config(), junk
    p.write_bytes(b"history_records = many\n")
    assert "history_records = 'many' is not a valid value" in config.load(str(p))[1][0]
    p.write_text("bogus = 1\nhistory_records = 9\n")
    cfg, problems = config.load(str(p))
    assert "unknown setting 'bogus'" in problems[0] and cfg.history_records == 9
    assert not config.load(str(tmp_path / "none"))[0].hold


def test_hold_off_values() -> None:
    assert config.parse_cmdline("appliance.hold=0") == {"hold": "0"}
    assert not config.Config(switches={"hold": "0"}).hold


def test_kvfile_lines() -> None:
    assert kvfile.parse(b"# c\n a = b = c \n\nempty=\n") == {"a": "b = c", "empty": ""}
    assert kvfile.render({"cause": "two\nlines", "n": "1"}) == b"cause = two lines\nn = 1\n"
    assert kvfile.parse(kvfile.render({"x": " padded "})) == {"x": "padded"}
