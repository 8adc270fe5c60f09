"""An image's version and build id: made by the build, put into os-release, read by the init."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.builder import identity
from appliance.esp import identity as running


def test_the_build_id_follows_the_inputs_and_nothing_else(tmp_path: Path) -> None:
    tree = tmp_path / "extra"
    (tree / "usr/lib/appliance").mkdir(parents=True)
    (tree / "usr/lib/appliance/core.py").write_text("print('v1')\n")
    conf = tmp_path / "mkosi.conf"
    conf.write_text("[Output]\n")
    roots = [("extra", tree), ("mkosi.conf", conf), ("absent", tmp_path / "nothing")]
    first = identity.build_id(roots, {"profile": "default"})
    assert len(first) == 12 and int(first, 16) >= 0
    assert identity.build_id(roots, {"profile": "default"}) == first  # the same inputs: the same id
    conf.touch()  # a newer time stamp is not a new input
    assert identity.build_id(roots, {"profile": "default"}) == first
    assert identity.build_id(roots, {"profile": "debug"}) != first
    (tree / "usr/lib/appliance/core.py").write_text("print('v2')\n")
    assert identity.build_id(roots, {"profile": "default"}) != first


def test_default_version_is_the_date_and_the_build_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert identity.default_version("3f2a0c1b9d8e", now=1795910400) == "2026.11.29.000000-3f2a0c1b"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert identity.default_version("3f2a0c1b9d8e", now=1795910400) == "1970.01.01.000000-3f2a0c1b"


@pytest.mark.parametrize("version", ["1.2+3", "", "-1", "a b", "v1/2", "x" * 65, "é"])
def test_a_version_that_cannot_name_a_file_or_carries_a_counter_is_refused(version: str) -> None:
    with pytest.raises(identity.IdentityError, match="VERSION="):
        identity.check_version(version)


def test_the_identity_goes_into_os_release_and_the_init_reads_it(tmp_path: Path) -> None:
    osrel = tmp_path / identity.OS_RELEASE
    osrel.parent.mkdir(parents=True)
    target = tmp_path / "usr/lib/os-release.debian"
    target.write_text('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nIMAGE_VERSION=stale\n')
    osrel.symlink_to(target.name)  # a package's file behind a link: never written through
    identity.write_fragment(tmp_path, "1.4.2", "3f2a0c1b9d8e", built_at=1796000000)
    assert identity.merge_os_release(tmp_path)
    assert not (tmp_path / identity.FRAGMENT).exists() and not osrel.is_symlink()
    assert "IMAGE_VERSION=stale" in target.read_text()
    text = osrel.read_text()
    assert text.count("IMAGE_VERSION=") == 1 and text.startswith('PRETTY_NAME="Debian')
    assert running.read(str(osrel)) == running.Identity("1.4.2", "3f2a0c1b9d8e", 1796000000)
    assert running.read(str(osrel)).describe() == "1.4.2 (3f2a0c1b9d8e)"
    assert not identity.merge_os_release(tmp_path)  # nothing left to merge: said, not guessed


def test_an_image_without_an_identity_says_so(tmp_path: Path) -> None:
    assert running.read(str(tmp_path / "absent")).describe() == "unknown (no build id)"
    (tmp_path / "os-release").write_text('ID=debian\nIMAGE_VERSION="2.0"\n')
    assert running.read(str(tmp_path / "os-release")).describe() == "2.0 (no build id)"


@given(st.binary(max_size=2000))
def test_any_os_release_bytes(data: bytes) -> None:
    fields = running.parse(data)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
