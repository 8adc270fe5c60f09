"""The machine a Python program expects: host name, /etc/hosts, loopback, the core's
environment (the rest is checked inside a booted image by test_qemu_machine.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import initconf
from appliance.builder import render
from appliance.builder.mirror import Mirrors
from appliance.init import machine


@pytest.mark.parametrize("name, ok", [
    ("appliance", True), ("kiosk-7", True), ("gw.example.net", True), ("a" * 63, True),
    ("", False), ("-x", False), ("x-", False), ("Kiosk", False), ("a_b", False), ("a..b", False),
    ("a" * 64, False), ("a." * 32 + "a", False), ("x\n", False),
])
def test_host_names_are_rfc1123_labels_of_at_most_64_bytes(name: str, ok: bool) -> None:
    assert initconf.valid_hostname(name) is ok


def test_a_missing_or_bad_hostname_file_gives_the_default_and_says_why(tmp_path: Path) -> None:
    assert machine.read_hostname(str(tmp_path / "none"))[0] == initconf.DEFAULT_HOSTNAME
    assert "cannot read" in machine.read_hostname(str(tmp_path / "none"))[1]
    (tmp_path / "hostname").write_bytes(b"\xff\xfe junk\n")
    name, problem = machine.read_hostname(str(tmp_path / "hostname"))
    assert name == initconf.DEFAULT_HOSTNAME and "no valid host name" in problem
    (tmp_path / "hostname").write_text("kiosk-7\n")
    assert machine.read_hostname(str(tmp_path / "hostname")) == ("kiosk-7", "")


def test_bringing_up_an_interface_that_is_up_changes_nothing() -> None:
    assert machine.interface_up("lo") is False  # this host's lo is up already: asked, not set
    with pytest.raises(OSError):
        machine.interface_up("nosuchif0")


def test_set_up_says_what_it_could_not_do(tmp_path: Path) -> None:
    (tmp_path / "hostname").write_text("kiosk-7\n")
    kernel = tmp_path / "kernel-hostname"
    kernel.write_text("(none)\n")
    said: list[str] = []
    machine.set_up(said.append, str(tmp_path / "hostname"), str(kernel))
    assert kernel.read_text() == "kiosk-7" and said == ["host name kiosk-7; loopback up"]
    said.clear()
    machine.set_up(said.append, str(tmp_path / "none"), str(tmp_path / "no-such-dir/hostname"))
    assert said[0].startswith("cannot read") and said[1] == (
        "could not set the host name appliance: No such file or directory; loopback up")


def test_the_image_gets_the_host_name_and_hosts_file(repo: Path, tmp_path: Path) -> None:
    settings = render.Settings(repo=repo, core=repo / "examples/demo-core.py", mirrors=Mirrors("http://m", None),
                               hostname="gw.example.net")
    render.render(settings, tmp_path / "r")
    assert (tmp_path / "r/extra/etc/hostname").read_text() == "gw.example.net\n"
    hosts = (tmp_path / "r/extra/etc/hosts").read_text().splitlines()
    assert "127.0.0.1\tlocalhost" in hosts and "127.0.1.1\tgw.example.net gw" in hosts
    assert any(line.startswith("::1") and "localhost" in line for line in hosts)
    with pytest.raises(render.CoreError, match="HOSTNAME='Bad_Name' is not a host name"):
        render.render(render.Settings(repo=repo, core=repo / "examples/demo-core.py",
                                      mirrors=Mirrors("http://m", None), hostname="Bad_Name"), tmp_path / "r2")
