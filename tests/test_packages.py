"""Debian packages for the core (build/packages.py): names asked for, and the chain that
pulls in what must not boot (on dpkg-query's output; the check itself runs in mkosi)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from appliance.builder import mkosi, packages

STATUS = "\n".join([
    "python3-requests\t\tpython3:any, python3-certifi, python3-urllib3 | python3-urllib3-compat",
    "python3-certifi\t\tpython3:any, ca-certificates",
    "python3-urllib3\t\tpython3:any",
    "network-thing\t\tlibc6 (>= 2.34), libnm0",
    "libnm0\t\tlibc6, default-logind | logind",
    "libpam-systemd\tdefault-logind, logind\tsystemd (= 257), libc6",
    "systemd\tsystemd-sysusers\tlibc6",
    "ca-certificates\t\topenssl",
    "openssl\t\tlibc6",
    "libc6\t\t",
    "python3\t\tlibc6",
    "zsh-thing\t\tzsh",
    "zsh\t\tlibc6",
])


def test_packages_come_from_packages_txt_and_packages_variable(tmp_path: Path) -> None:
    (tmp_path / "__main__.py").write_text("")
    (tmp_path / "packages.txt").write_text("# for the core\npython3-requests\n\nlibusb-1.0-0  # a comment\n")
    assert packages.wanted(tmp_path, "python3-yaml, python3-requests") == [
        "python3-requests", "libusb-1.0-0", "python3-yaml"]
    assert packages.wanted(tmp_path / "__main__.py", "") == []  # a one-file core has no packages.txt
    (tmp_path / "packages.txt").write_text("python3-requests; rm -rf /\n")
    with pytest.raises(packages.PackagesError, match=r"packages.txt:1: .* is not a Debian package name"):
        packages.wanted(tmp_path)
    with pytest.raises(packages.PackagesError, match=r"PACKAGES=: 'Bad_Name' is not"):
        packages.wanted(tmp_path / "__main__.py", "Bad_Name")


def test_the_chain_that_pulls_in_systemd_is_named() -> None:
    graph = packages.parse_status(STATUS)
    assert graph["libnm0"] == {"libc6", "libpam-systemd"}  # logind is virtual: its provider counts
    found = packages.chains(graph, ["python3-requests", "network-thing"], {"systemd", "zsh"})
    assert found == [["network-thing", "libnm0", "libpam-systemd", "systemd"]]
    assert packages.chains(graph, ["python3-requests"], {"systemd"}) == []
    assert packages.chains(graph, ["zsh-thing", "systemd"], {"systemd", "zsh"}) == [["systemd"], ["zsh-thing", "zsh"]]


def test_check_says_each_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Done:
        stdout = STATUS
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Done())
    assert packages.check(["network-thing", "python3-requests"]) == [
        "network-thing pulls in systemd, which must not be in what boots (network-thing -> libnm0 -> "
        "libpam-systemd -> systemd): refused; choose a package that does not need it"]
    assert packages.check(["python3-requests"]) == []


def test_packages_reach_mkosi_and_its_check() -> None:
    cmd = mkosi.mkosi_command(Path("/r"), Path("/b/render"), Path("/o"), Path("/c"), "default",
                              packages=["python3-yaml", "libusb-1.0-0"])
    assert "--package=python3-yaml,libusb-1.0-0" in cmd
    assert "--environment=APPLIANCE_PACKAGES=python3-yaml libusb-1.0-0" in cmd
    assert cmd[-2:] == ["--force", "build"]
    assert [a for a in mkosi.mkosi_command(Path("/r"), Path("/b/render"), Path("/o"), Path("/c"), "default")
            if a.startswith("--package=")] == ["--package=linux-image-amd64,tiny-initramfs"]  # Debian's kernel only
