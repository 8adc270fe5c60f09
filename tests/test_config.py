import json
from pathlib import Path

from appliance.init import config


def test_load_baked_config_and_switches(tmp_path: Path) -> None:
    p = tmp_path / "init.json"
    p.write_text(json.dumps({"core": "/usr/lib/appliance/core/x.py", "modules": ["vfat"], "runtime_log_cap": 4096}))
    cfg, problems = config.load(str(p), cmdline="console=ttyS0 appliance.hold appliance.x=2 quiet")
    assert problems == []
    assert cfg.core.endswith("x.py") and cfg.modules == ("vfat",) and cfg.runtime_log_cap == 4096
    assert cfg.hold and cfg.switches["x"] == "2"


def test_garbage_config_falls_back_to_defaults(tmp_path: Path) -> None:
    p = tmp_path / "init.json"
    for junk in ("\x00\xff", "[1, 2]", '{"modules": 5}'):
        p.write_text(junk)
        cfg, problems = config.load(str(p))
        assert problems and cfg == config.Config()
    p.write_text('{"bogus": 1}')
    cfg, problems = config.load(str(p))
    assert "unknown setting 'bogus'" in problems[0]
    assert not config.load(str(tmp_path / "none"))[0].hold


def test_hold_off_values() -> None:
    assert config.parse_cmdline("appliance.hold=0") == {"hold": "0"}
    assert not config.Config(switches={"hold": "0"}).hold
