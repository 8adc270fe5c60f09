import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import initconf
from appliance.builder import mkosi, render
from appliance.builder.mirror import MirrorError, Mirrors, parse_indextargets
from appliance.esp import kvfile

INDEXTARGETS = """bookworm-security http://mirror.example/debian-security/
bookworm http://mirror.example/debian/
bookworm-updates http://mirror.example/debian/
bookworm-backports http://mirror.example/debian/
"""


def test_mirror_from_apt_indextargets() -> None:
    m = parse_indextargets(INDEXTARGETS)
    assert m == Mirrors("http://mirror.example/debian", "http://mirror.example/debian-security")
    assert parse_indextargets("trixie http://m/debian\n").security is None
    with pytest.raises(MirrorError):
        parse_indextargets("bookworm-updates http://m/debian\n")


@pytest.mark.parametrize("content,name,error", [
    (None, "missing.py", "core not found"),
    ("print('x')", "core.sh", "is not a Python file"),
    ("def f(:\n", "core.py", "is not valid Python"),
    ("\x00\x01binary", "core.py", "is not Python source"),
])
def test_bad_cores_fail_before_any_long_work(tmp_path: Path, content: str | None, name: str, error: str) -> None:
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(render.CoreError, match=error):
        render.check_core(p)


def test_core_directory_needs_main(tmp_path: Path) -> None:
    (tmp_path / "lib.py").write_text("x = 1\n")
    with pytest.raises(render.CoreError, match=r"no __main__\.py"):
        render.check_core(tmp_path)
    (tmp_path / "__main__.py").write_text("import lib\n")
    assert render.check_core(tmp_path) == tmp_path / "__main__.py"


def test_render_writes_sources_config_and_core(repo: Path, tmp_path: Path) -> None:
    core = tmp_path / "mycore.py"
    core.write_text("print('hi')\n")
    settings = render.Settings(repo=repo, core=core, mirrors=Mirrors("http://m.example/debian", None))
    out = tmp_path / "render"
    render.render(settings, out)
    sources = (out / "pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()
    assert "URIs: http://m.example/debian" in sources and "Suites: trixie trixie-updates" in sources
    assert "security" not in sources and "debug" not in sources
    cfg = kvfile.parse((out / "extra/etc/appliance/init.conf").read_bytes())
    assert cfg["core"] == "/usr/lib/appliance/core/mycore.py"
    assert {"vfat", "efivarfs"} <= set(cfg["modules"].split()) and cfg["core_memory_max"] == ""
    assert (out / "extra/usr/lib/appliance/core/mycore.py").read_text() == "print('hi')\n"
    assert (out / "extra/init").stat().st_mode & 0o111
    assert (out / "extra/usr/lib/appliance/python/appliance/init/main.py").exists()
    assert not (out / "extra/usr/lib/appliance/python/appliance/build").exists()


def test_rendered_config_loads_in_the_init(repo: Path, tmp_path: Path) -> None:
    from appliance import initconf as config
    settings = render.Settings(repo=repo, core=repo / "examples/demo-core.py", mirrors=Mirrors("http://m", None),
                               core_memory_max="200M")
    render.render(settings, tmp_path / "r")
    cfg, problems = config.load(str(tmp_path / "r/extra/etc/appliance/init.conf"))
    assert problems == [] and cfg.core_memory_max == "200M" and {"vfat", "efivarfs"} <= set(cfg.modules)


def test_mkosi_command(tmp_path: Path) -> None:
    cmd = mkosi.mkosi_command(Path("/r"), Path("/b/render"), Path("/b/out"), Path("/c"), "debug")
    assert cmd[0] == "mkosi" and cmd[-2:] == ["--force", "build"]
    assert "--extra-tree=/b/render/extra:/" in cmd and "--package-manager-tree=/b/render/pkgmngr:/" in cmd
    assert "--incremental=yes" in cmd and "--profile=debug" in cmd
    assert "--profile=default" not in mkosi.mkosi_command(Path("/r"), Path("/b"), Path("/o"), Path("/c"), "default")


def test_no_registry_host_names_in_the_repository(repo: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"(deb|security|archive|ftp)\.debian\.org|pypi\.org|files\.pythonhosted")
    offenders = [f for f in files if (repo / f).is_file() and pattern.search((repo / f).read_text(errors="ignore"))]
    assert offenders == []


def test_security_mirror_override(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.builder import mirror
    assert mirror.host_mirrors("http://m/debian", "none").security is None
    assert mirror.host_mirrors("http://m/debian", "http://s/sec/").security == "http://s/sec"
    import subprocess
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, INDEXTARGETS, ""))
    assert mirror.host_mirrors(None, None).security == "http://mirror.example/debian-security"


def test_mkosi_output_goes_to_a_log_and_its_steps_are_said(tmp_path: Path) -> None:
    script = ("import sys\nprint('\u2023 Installing Debian')\nprint('Get:1 noise ' * 5)\n"
              "print('update-alternatives: error: noise')\nprint('packages: x pulls in systemd: refused')\n")
    said: list[str] = []
    mkosi.run_mkosi([sys.executable, "-c", script], log=tmp_path / "logs/mkosi.log", say=said.append)
    assert [line.split("s  ", 1)[-1] if "mkosi:" in line else line for line in said] == [
        "mkosi: Installing Debian", "build:   packages: x pulls in systemd: refused"]
    assert "Get:1 noise" in (tmp_path / "logs/mkosi.log").read_text()
    said.clear()
    with pytest.raises(RuntimeError, match=rf"mkosi failed \(exit 3\): .* whole output is {tmp_path}/logs/mkosi.log"):
        mkosi.run_mkosi([sys.executable, "-c", script + "sys.exit(3)\n"], log=tmp_path / "logs/mkosi.log",
                        say=said.append)
    assert said[-1] == "build: mkosi: packages: x pulls in systemd: refused"  # the tail, on failure


def test_a_network_image_gets_the_nic_drivers_and_their_firmware(repo: Path, tmp_path: Path) -> None:
    settings = render.Settings(repo=repo, core=repo / "examples/demo-core.py", mirrors=Mirrors("http://m", None),
                               network="dhcp", network_wait_seconds=5)
    render.render(settings, tmp_path / "r")
    sources = (tmp_path / "r/pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()
    assert "Components: main non-free-firmware\n" in sources
    cfg = kvfile.parse((tmp_path / "r/extra/etc/appliance/init.conf").read_bytes())
    assert cfg["network"] == "dhcp" and float(cfg["network_wait_seconds"]) == 5
    cmd = mkosi.mkosi_command(Path("/r"), Path("/b/render"), Path("/o"), Path("/c"), "default", network=True)
    include = next(a for a in cmd if a.startswith("--kernel-modules-include="))
    assert "/net/virtio_net\\." in include and "/net/ethernet/realtek/r8169\\." in include
    assert "--package=firmware-realtek" in cmd
    render.render(render.Settings(repo=repo, core=repo / "examples/demo-core.py", mirrors=Mirrors("http://m", None)),
                  tmp_path / "r2")
    assert "Components: main\n" in (tmp_path / "r2/pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()


def test_crash_reports_are_baked_in_with_their_ca_and_checked_first(repo: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    settings = render.Settings(repo=repo, core=repo / "examples/demo-core.py", mirrors=Mirrors("http://m", None),
                               network="dhcp", crash_reports="https://k3y@tracker.example/4", crash_reports_ca=ca,
                               time_servers=("192.0.2.1", "192.0.2.2:11123"), syslog="logs.example:514")
    render.render(settings, tmp_path / "r")
    cfg = kvfile.parse((tmp_path / "r/extra/etc/appliance/init.conf").read_bytes())
    assert cfg["crash_reports"] == "https://k3y@tracker.example/4"
    assert cfg["time_servers"] == "192.0.2.1 192.0.2.2:11123" and cfg["syslog"] == "logs.example:514"
    with pytest.raises(render.CoreError, match="host:port expected"):
        render.check_fleet("dhcp", syslog="logs.example")
    with pytest.raises(render.CoreError, match="an IPv4 address"):
        render.check_fleet("dhcp", time_servers=("pool.ntp.org",))
    with pytest.raises(render.CoreError, match="NTP= goes over the network: build with NETWORK=dhcp"):
        render.check_fleet("off", time_servers=("192.0.2.1",))
    assert (tmp_path / "r/extra" / cfg["crash_reports_ca"].lstrip("/")).read_bytes() == ca.read_bytes()
    assert (tmp_path / "r/extra/usr/lib/appliance/python/appliance/report/queue.py").is_file()
    for dsn, ca_file, network, says in (
            ("https://k@h/1", None, "off", "NETWORK=dhcp"),
            ("https://h/1", None, "dhcp", "public key"),
            ("", ca, "dhcp", "CRASH_REPORTS_CA= is for CRASH_REPORTS="),
            ("https://k@h/1", tmp_path / "missing.pem", "dhcp", "not a file of PEM certificates")):
        with pytest.raises(render.CoreError, match=says):
            render.check_fleet(network, crash_reports=dsn, crash_reports_ca=ca_file)


def test_data_size_reaches_the_init_as_it_reads_it(repo: Path, tmp_path: Path) -> None:
    assert render.data_size("") == "rest" and render.data_size("none") == "none"
    assert render.data_size("4G") == str(4 << 30)
    with pytest.raises(render.CoreError, match=r"DATA_SIZE='12M': .* smaller than the least data partition, 64 MiB"):
        render.data_size("12M")
    with pytest.raises(render.CoreError, match=r"DATA_SIZE='lots': .* not a size"):
        render.data_size("lots")
    settings = render.Settings(repo=repo, core=repo / "examples/demo-core.py", mirrors=Mirrors("http://m", None),
                               data_size="512M")
    render.render(settings, tmp_path / "r")
    cfg = kvfile.parse((tmp_path / "r/extra/etc/appliance/init.conf").read_bytes())
    assert cfg["data_size"] == str(512 << 20)
    loaded, problems = initconf.load(str(tmp_path / "r/extra/etc/appliance/init.conf"))
    assert loaded.data_size == str(512 << 20) and not problems


def test_an_update_channel_puts_its_root_and_settings_into_the_image(repo: Path, tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text('{"signed": {"version": 1}}\n')
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    settings = render.Settings(repo=repo, core=repo / "examples/demo-core.py", mirrors=Mirrors("http://m", None),
                               network="dhcp", update_channel="https://updates.example/fleet/",
                               update_interval_seconds=600, update_ca=ca, channel_root=root)
    render.render(settings, tmp_path / "r")
    extra = tmp_path / "r/extra"
    loaded, problems = initconf.load(str(extra / "etc/appliance/init.conf"))
    assert not problems and loaded.update_channel == "https://updates.example/fleet/"
    assert loaded.update_interval_seconds == 600
    assert (extra / loaded.update_ca.lstrip("/")).read_bytes() == ca.read_bytes()
    assert (extra / initconf.CHANNEL_ROOT.lstrip("/")).read_bytes() == root.read_bytes()
    assert (extra / "usr/lib/appliance/python/appliance/channel/check.py").is_file()
    assert not (extra / "usr/lib/appliance/python/appliance/channel/publish.py").exists()  # the host's side
    for network, url, interval, ca_file, says in (
            ("off", "https://u/", 60, None, "UPDATE_CHANNEL= goes over the network"),
            ("dhcp", "ftp://u/", 60, None, "http:// or https:// URL"),
            ("dhcp", "https://u/", 1, None, "at least 5"),
            ("dhcp", "", 60, ca, "UPDATE_CA= is for UPDATE_CHANNEL="),
            ("dhcp", "https://u/", 60, tmp_path / "missing.pem", "not a file of PEM certificates")):
        with pytest.raises(render.CoreError, match=says):
            render.check_update(network, url, interval, ca_file)
