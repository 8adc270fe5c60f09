"""Secure Boot signing of the UKI with sbsigntool, and the key it is signed with.

The key is made once, outside the clone (``default_keys_dir``: private key mode 0600,
never in git, never in ``build/``); a fleet brings its own with explicit paths.
``sbverify`` checks every signature the build makes.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

KEY_NAME = "db.key"
CERT_NAME = "db.crt"  # PEM, for sbsign and firmware tools
DER_NAME = "db.cer"  # DER, what MokManager's "Enroll key from disk" reads


class SigningError(Exception):
    pass


@dataclass(frozen=True)
class Key:
    key: Path
    cert: Path


def default_keys_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "appliance" / "secure-boot"


def _run(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise SigningError(f"{cmd[0]} is not installed ({e}); apt-get install sbsigntool openssl") from None
    if r.returncode != 0:
        raise SigningError(f"{' '.join(cmd[:2])} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()}")
    return r.stdout + r.stderr


def ensure_key(directory: Path, subject: str = "appliance Secure Boot signing key") -> Key:
    """The key in ``directory``, made on first use: RSA 2048 (what shim and firmware
    accept) and a self-signed certificate for 10 years."""
    key, cert = directory / KEY_NAME, directory / CERT_NAME
    if not (key.exists() and cert.exists()):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        old = os.umask(0o077)
        try:
            _run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
                  "-subj", f"/CN={subject}/", "-keyout", str(key), "-out", str(cert)])
        finally:
            os.umask(old)
        key.chmod(0o600)
    return Key(key, cert)


def der(cert: Path, out: Path) -> Path:
    """Write ``cert`` (PEM) to ``out`` in DER form, which MokManager reads; a fleet's key
    directory is never written to."""
    _run(["openssl", "x509", "-in", str(cert), "-outform", "DER", "-out", str(out)])
    return out


def sign(efi: Path, out: Path, key: Key) -> None:
    """Sign ``efi`` into ``out`` and check the signature with the certificate."""
    tmp = out.with_name(out.name + ".tmp")
    _run(["sbsign", "--key", str(key.key), "--cert", str(key.cert), "--output", str(tmp), str(efi)])
    verify(tmp, key.cert)
    tmp.replace(out)


def verify(efi: Path, cert: Path) -> None:
    _run(["sbverify", "--cert", str(cert), str(efi)])
