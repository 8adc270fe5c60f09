"""The update channel in QEMU: a machine that updates itself from make publish's files on
a plain web server (Python's http.server on the host's loopback, reached through QEMU's
restricted user network), and refuses what a mirror must not be able to do.

One machine, one story, so the boots are shared: net-1 running; an expired timestamp,
a rollout of 0%, an image changed on the mirror (each refused, net-1 runs on); net-2 at
100%: fetched, tried, committed; its core points the machine at the HTTPS server (a
test CA the image trusts); the channel's old files put back (a replay): refused; net-3,
which crashes at every start: fetched over HTTPS, rolled back after its tries, and not
tried again."""

from __future__ import annotations

import datetime
import functools
import http.server
import ipaddress
import re
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from appliance.channel import publish
from appliance.esp import layout
from appliance.harness.machine import Machine
from appliance.harness.qemu import user_network
from tests.conftest import BUILD

pytestmark = pytest.mark.qemu

HTTP, HTTPS = "10.0.2.102:8080", "10.0.2.102:8443"  # the test images' UPDATE_CHANNEL=, and the HTTPS one
KEYS = BUILD / "test-channel/keys"
CA = BUILD / "test-channel"


class Logged(http.server.SimpleHTTPRequestHandler):
    paths: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.paths.append(self.path)
        super().do_GET()


def serve(root: Path, context: ssl.SSLContext | None = None) -> tuple[http.server.ThreadingHTTPServer, list[str]]:
    paths: list[str] = []
    handler = type("Handler", (Logged,), {"paths": paths})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, paths


def server_context(tmp_path: Path) -> ssl.SSLContext:
    """A certificate for 10.0.2.102, signed by the test CA the images trust (UPDATE_CA=)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID
    ca_key = serialization.load_pem_private_key((CA / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((CA / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                                                                  "channel")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.0.2.102"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
                           critical=False)  # Python 3.13 verifies strictly (VERIFY_X509_STRICT)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    (tmp_path / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem")
    return context


class Served(NamedTuple):
    root: Path  # the channel's directory
    http_port: int
    https_port: int
    https_paths: list[str]  # what was asked for over HTTPS


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Served]:
    """The channel's directory, served over HTTP and HTTPS."""
    root = tmp_path / "channel"
    root.mkdir()
    plain, _ = serve(root)
    secure, paths = serve(root, server_context(tmp_path))
    try:
        yield Served(root, plain.server_address[1], secure.server_address[1], paths)
    finally:
        for s in (plain, secure):
            s.shutdown()
            s.server_close()


def quiet(_: str) -> None:
    pass


def test_a_machine_updates_itself_from_a_channel_and_refuses_what_a_mirror_must_not_do(
        test_net_versions: tuple[Path, Path, Path], qemu_ready: None, channel: Served,
        tmp_path: Path, log_dir: Path) -> None:
    v1, v2, v3 = test_net_versions
    root = channel.root
    keys = publish.Keys(KEYS)
    publish.publish(root, keys, v1, say=quiet)
    old = tmp_path / "old-channel"
    shutil.copytree(root, old)
    m = Machine(v1.parent / "appliance.raw", tmp_path / "m", name="update-channel", log_dir=log_dir,
                nic=user_network(relay={HTTP: channel.http_port, HTTPS: channel.https_port}))
    m.esp_write(layout.TEST_VERSION_ACTION, f"net-2 channel https://{HTTPS}/\nnet-3 raise\n".encode())
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"update channel: checked: nothing newer than net-1 \(the channel's newest: net-1\)", 120)
        publish.publish(root, keys, None, timestamp_seconds=1, say=quiet)  # a mirror frozen at this moment
        time.sleep(1.5)
        m.expect(r"update channel: refused: the channel's metadata has expired \(a frozen mirror", 60)
        publish.publish(root, keys, None, say=quiet)
        publish.publish(root, keys, v2, rollout=0, say=quiet)
        m.expect(r"update channel: checked: net-2 is not for this machine yet \(rollout 0%\)", 60)
        (target,) = (root / "targets/images").glob("*.appliance-net-2.efi")
        good = target.read_bytes()
        target.write_bytes(good[:-4096] + bytes(4096))  # other bytes of the same length, on the mirror
        publish.publish(root, keys, v2, rollout=100, say=quiet)  # the file is there: publish keeps it
        m.expect(r"update channel: refused: a file does not match its signed length and hash", 120)
        target.write_bytes(good)
        m.expect(r"update channel: staged net-2 \(\w+\) as generation 2, 3 tries, from the channel", 180)
        m.expect(r"update channel: restarting into net-2's trial", 10)
        m.expect(r"init: shutdown requested", 30)
        m.wait_boot(timeout=120)
        m.expect(r"init: trying update net-2: try 1 of 3", 60)
        m.expect(rf"matrix core: update channel now https://{re.escape(HTTPS)}/", 60)
        m.expect(r"init: update net-2 committed", 60)
        new = tmp_path / "new-channel"
        shutil.copytree(root, new)
        shutil.rmtree(root)
        shutil.copytree(old, root)  # the mirror serves the channel as it was, signatures and all
        m.expect(r"update channel: refused: the channel's metadata is older than what this machine already "
                 r"trusts \(a replay\?\)", 120)
        shutil.rmtree(root)
        shutil.copytree(new, root)
        publish.publish(root, keys, v3, say=quiet)
        m.expect(r"update channel: staged net-3 \(\w+\) as generation 3, 3 tries, from the channel", 180)
        for n in (1, 2, 3):
            m.wait_boot(timeout=120)
            m.expect(rf"init: trying update net-3: try {n} of 3", 60)
            m.expect(r"RuntimeError: matrix core: raised on purpose", 60)
        m.wait_boot(timeout=180)
        m.expect(r"init: update to net-3 rolled back after 3 failed boots", 60)
        m.expect(r"update channel: checked: net-3 was rolled back on this machine: not tried again until a "
                 r"newer one", 120)
        m.power_cut()
    net3 = [p for p in channel.https_paths if p.endswith(".appliance-net-3.efi")]
    assert net3, channel.https_paths  # net-3 came over HTTPS
    log = m.esp_read(layout.UPDATE_LOG).decode()
    for line in ("channel: refused: the channel's metadata has expired", "channel: refused: a file does not match",
                 "channel: staged net-2", "committed net-2", "channel: refused: the channel's metadata is older",
                 "channel: staged net-3", "update to net-3 rolled back"):
        assert line in log, log
    assert b"net-3" in m.esp_read(layout.ROLLED_BACK)
