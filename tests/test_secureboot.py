from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from appliance import efivars as efi
from appliance.init import secureboot


def fake(tmp_path: Path, value: bytes | None, lockdown: str | None) -> secureboot.State:
    efivars = tmp_path / "efivars"
    efivars.mkdir(exist_ok=True)
    var = efivars / f"SecureBoot-{efi.GLOBAL}"
    if value is not None:
        var.write_bytes(b"\x06\0\0\0" + value)
    elif var.exists():
        var.unlink()
    lock = tmp_path / "lockdown"
    if lockdown is not None:
        lock.write_text(lockdown)
    elif lock.exists():
        lock.unlink()
    return secureboot.read(str(efivars), str(lock))


def test_on_off_unknown_and_the_lockdown_in_force(tmp_path: Path) -> None:
    state = fake(tmp_path, b"\x01", "none [integrity] confidentiality\n")
    assert state == secureboot.State(True, "integrity") and state.describe() == "on (lockdown: integrity)"
    assert fake(tmp_path, b"\x00", "[none] integrity confidentiality\n").describe() == "off"
    assert fake(tmp_path, b"\x00", None).describe() == "off"
    assert fake(tmp_path, None, None).describe() == "unknown (no SecureBoot variable)"
    # Locked down without Secure Boot (lockdown= on the command line): said too.
    assert fake(tmp_path, b"\x00", "none integrity [confidentiality]").describe() == "off (lockdown: confidentiality)"


@given(st.binary(max_size=40), st.text(max_size=80))
def test_any_bytes(tmp_path_factory: object, value: bytes, lockdown: str) -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        state = fake(Path(d), value, lockdown)
    assert state.enabled in (True, False) and isinstance(state.describe(), str)


def test_signing_key_is_made_once_private_and_checked(tmp_path: Path) -> None:
    import stat

    from appliance.builder import signing
    key = signing.ensure_key(tmp_path / "keys")
    assert stat.S_IMODE(key.key.stat().st_mode) == 0o600
    assert signing.der(key.cert, tmp_path / "key.cer").read_bytes()[:1] == b"\x30"  # DER: a SEQUENCE
    assert signing.ensure_key(tmp_path / "keys").cert.read_bytes() == key.cert.read_bytes()  # not made again
    efi = tmp_path / "a.efi"
    efi.write_bytes(b"not a PE file")
    try:
        signing.sign(efi, tmp_path / "signed.efi", key)
    except signing.SigningError as e:
        assert "sbsign" in str(e)
    else:
        raise AssertionError("signing garbage must fail")


def test_the_build_refuses_to_sign_a_debug_image_with_the_fleet_key(tmp_path: Path) -> None:
    import argparse

    import pytest

    from appliance.builder import signing
    from appliance.builder.__main__ import signing_key

    def args(**kw: object) -> argparse.Namespace:
        base = {"secure_boot": "shim", "sb_key": "", "sb_cert": "", "keys_dir": str(tmp_path / "keys"),
                "profile": "default", "sign_debug": False}
        return argparse.Namespace(**{**base, **kw})

    assert signing_key(args(secure_boot="off")) is None
    key = signing_key(args())
    assert key is not None and key.cert == tmp_path / "keys" / signing.CERT_NAME
    with pytest.raises(signing.SigningError, match="refusing to sign a debug image"):
        signing_key(args(profile="debug"))
    assert signing_key(args(profile="debug", sign_debug=True)) == key  # asked for in so many words
    with pytest.raises(signing.SigningError, match="both SB_KEY= and SB_CERT="):
        signing_key(args(sb_key=str(key.key)))
    assert signing_key(args(sb_key=str(key.key), sb_cert=str(key.cert))) == key
