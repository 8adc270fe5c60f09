"""DHCP messages and the network step's pieces (the whole is booted in test_qemu_network.py)."""

from __future__ import annotations

import ipaddress
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.init import dhcp, network

MAC = bytes.fromhex("525400123456")
PYTHON_DIR = Path(__file__).resolve().parents[1] / "python"


def reply(kind: int, xid: int = 7, mac: bytes = MAC, opts: bytes | None = None) -> bytes:
    header = dhcp.HEADER.pack(dhcp.BOOTREPLY, 1, 6, 0, xid, 0, 0, bytes(4), ipaddress.IPv4Address("10.0.2.15").packed,
                              bytes(4), bytes(4), mac.ljust(16, b"\0"), b"", b"")
    if opts is None:
        opts = (bytes([dhcp.OPT_TYPE, 1, kind, dhcp.OPT_SUBNET, 4, 255, 255, 255, 0, dhcp.OPT_ROUTER, 4, 10, 0, 2, 2,
                       dhcp.OPT_DNS, 8, 10, 0, 2, 3, 1, 1, 1, 1, dhcp.OPT_SERVER_ID, 4, 10, 0, 2, 2,
                       dhcp.OPT_LEASE, 4]) + (86400).to_bytes(4, "big") + bytes([dhcp.OPT_END]))
    return header + dhcp.MAGIC + opts


def test_a_discover_asks_for_a_broadcast_answer_and_the_options_we_use() -> None:
    packet = dhcp.request(dhcp.DISCOVER, 0x1234, MAC, "kiosk")
    op, htype, hlen, _, xid, _, flags, *_ = dhcp.HEADER.unpack_from(packet)
    assert (op, htype, hlen, xid, flags) == (dhcp.BOOTREQUEST, 1, 6, 0x1234, dhcp.BROADCAST_FLAG)
    opts = dhcp.options(packet[dhcp.HEADER.size + 4:])
    assert opts[dhcp.OPT_TYPE] == bytes([dhcp.DISCOVER]) and opts[dhcp.OPT_HOSTNAME] == b"kiosk"
    assert set(opts[dhcp.OPT_PARAMS]) >= {dhcp.OPT_SUBNET, dhcp.OPT_ROUTER, dhcp.OPT_DNS}
    renewal = dhcp.request(dhcp.REQUEST, 1, MAC, ciaddr="10.0.2.15")
    assert dhcp.HEADER.unpack_from(renewal)[6] == 0 and renewal[12:16] == bytes([10, 0, 2, 15])


def test_an_answer_is_read_with_its_lease() -> None:
    got = dhcp.parse(reply(dhcp.ACK), 7, MAC)
    assert got == dhcp.Reply(dhcp.ACK, 7, "10.0.2.15", 24, ("10.0.2.2",), ("10.0.2.3", "1.1.1.1"), "10.0.2.2",
                             86400, 43200, 75600)


def test_what_is_not_an_answer_to_us_is_ignored() -> None:
    assert dhcp.parse(reply(dhcp.ACK, xid=8), 7, MAC) is None
    assert dhcp.parse(reply(dhcp.ACK, mac=bytes(6)), 7, MAC) is None
    assert dhcp.parse(reply(dhcp.DISCOVER), 7, MAC) is None
    assert dhcp.parse(reply(dhcp.ACK)[:200], 7, MAC) is None
    truncated = reply(dhcp.ACK, opts=bytes([dhcp.OPT_TYPE, 1, dhcp.OFFER, dhcp.OPT_DNS, 200, 1, 2]))
    offer = dhcp.parse(truncated, 7, MAC)
    assert offer is not None and offer.dns == () and offer.prefix == 24 and offer.lease == 3600


@given(st.binary(max_size=400))
def test_any_bytes_after_the_header(tail: bytes) -> None:
    got = dhcp.parse(reply(dhcp.ACK, opts=tail), 7, MAC)
    assert got is None or got.kind in (dhcp.OFFER, dhcp.ACK, dhcp.NAK)


def test_the_state_file_and_resolv_conf() -> None:
    state = network.State("up", "eth0", "10.0.2.15/24", "10.0.2.2", ("10.0.2.3",))
    assert state.text() == ("state=up\ninterface=eth0\naddress=10.0.2.15/24\ngateway=10.0.2.2\ndns=10.0.2.3\n"
                            "why=\n")
    assert network.resolv_conf(("10.0.2.3", "1.1.1.1")) == "nameserver 10.0.2.3\nnameserver 1.1.1.1\n"
    assert network.resolv_conf(()).startswith("#")


def test_only_wired_interfaces_with_a_device_are_used(tmp_path: Path) -> None:
    for name, device, wireless in (("lo", False, False), ("eth0", True, False), ("wlan0", True, True),
                                   ("docker0", False, False), ("enp1s0", True, False)):
        (tmp_path / name).mkdir()
        if device:
            (tmp_path / name / "device").mkdir()
        if wireless:
            (tmp_path / name / "wireless").mkdir()
    (tmp_path / "eth0" / "carrier").write_text("1\n")
    assert network.wired_interfaces(str(tmp_path)) == ["enp1s0", "eth0"]
    assert network.carrier("eth0", str(tmp_path)) and not network.carrier("enp1s0", str(tmp_path))


def test_the_route_request_has_the_kernels_size() -> None:
    assert struct.calcsize(network.RTENTRY) == 120  # struct rtentry on x86-64


def test_off_starts_nothing_and_an_unknown_mode_is_said() -> None:
    said: list[str] = []
    network.start_if_asked("off", 0, said.append, lambda: None)
    network.start_if_asked("static", 0, said.append, lambda: None)
    assert said == ["network: unknown mode 'static' (dhcp or off): no network"]


def test_the_address_and_default_route_are_set_and_dropped_by_the_kernels_ioctls() -> None:
    """In a network namespace of its own (as root; QEMU's restricted DHCP offers no router,
    so this is where the route is proven): lo gets 10.9.0.5/24 and a default route via
    10.9.0.1, then loses both."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); from appliance.init import network, machine\n"
        "machine.interface_up('lo')\n"
        "import fcntl, socket\n"
        "def address():\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "    try:\n"
        "        return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, b'lo'.ljust(40, b'\\0'))[20:24])\n"
        "    except OSError as e:\n"
        "        return f'none ({e.strerror})'\n"
        "network.configure('lo', '10.9.0.5', 24, '10.9.0.1')\n"
        "print('address', address()); print(open('/proc/net/route').read())\n"
        "network.unconfigure('lo')\n"
        "print('AFTER'); print('address', address()); print(open('/proc/net/route').read())\n")
    try:
        out = subprocess.run(["unshare", "--net", sys.executable, "-c", probe, str(PYTHON_DIR)],
                             capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("unshare (util-linux) is missing")
    if out.returncode != 0 and "unshare failed" in out.stderr:
        pytest.skip(f"no network namespace here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.split("AFTER")
    # /proc/net/route: destination 0 via gateway 10.9.0.1 (little-endian hex), and the subnet's route.
    assert re.search(r"^lo\s+00000000\s+0100090A\s+0003", before, re.M), before
    assert "address 10.9.0.5\n" in before
    assert "address none (Cannot assign requested address)" in after and "0100090A" not in after, after


class FakeClock:
    """time.monotonic and time.sleep for the network module: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeClient:
    def __init__(self, answers: list[dhcp.Reply | None]) -> None:
        self.name, self.answers = "eth0", answers
        self.renewals: list[float] = []

    def renew(self, lease: dhcp.Reply) -> dhcp.Reply | None:
        self.renewals.append(clock.now)
        return self.answers.pop(0) if self.answers else None


clock = FakeClock()


def lease(seconds: int) -> dhcp.Reply:
    return dhcp.Reply(dhcp.ACK, 1, "10.0.2.15", 24, ("10.0.2.2",), (), "10.0.2.2", seconds, seconds // 2,
                      seconds * 7 // 8)


@pytest.fixture
def keeping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[network.Network, list[str], list[str]]:
    clock.now = 1000.0
    monkeypatch.setattr("appliance.init.network.time", clock)  # its monotonic and sleep
    monkeypatch.setattr(network, "carrier", lambda name: True)
    dropped: list[str] = []
    monkeypatch.setattr(network, "unconfigure", dropped.append)
    said: list[str] = []
    return network.Network(said.append, "kiosk", str(tmp_path / "run/network"), str(tmp_path / "resolv")), said, \
        dropped


def test_a_lease_is_renewed_at_t1_and_when_unrenewed_ends_with_the_address_dropped(
        keeping: tuple[network.Network, list[str], list[str]]) -> None:
    net, said, dropped = keeping
    client = FakeClient([lease(100), None, None, None, None, None, None, None])
    start = clock.now
    net._keep(client, lease(100))  # type: ignore[arg-type]
    assert client.renewals[0] - start == pytest.approx(50, abs=1)  # T1
    assert client.renewals[1] - client.renewals[0] == pytest.approx(50, abs=1)  # renewed: T1 of the new lease
    assert all(b > a for a, b in zip(client.renewals, client.renewals[1:], strict=False))  # retried, not spinning
    assert len(client.renewals) < 10
    assert dropped == ["eth0"] and said == [
        "network: lease of 10.0.2.15 on eth0 ended without renewal: address dropped"]
    assert clock.now - client.renewals[0] == pytest.approx(100, abs=1.5)  # the renewed lease's end
    assert (Path(net.state_path)).read_text().startswith("state=down\ninterface=eth0\n")


def test_a_lost_link_drops_the_address(keeping: tuple[network.Network, list[str], list[str]],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    net, said, dropped = keeping
    monkeypatch.setattr(network, "carrier", lambda name: clock.now < 1030)
    net._keep(FakeClient([]), lease(100))  # type: ignore[arg-type]
    assert dropped == ["eth0"] and said == ["network: link lost on eth0: address 10.0.2.15 dropped"]


def test_the_core_waits_for_the_network_only_as_long_as_asked(
        keeping: tuple[network.Network, list[str], list[str]]) -> None:
    net, said, _ = keeping
    network.wait_until_up(net, 0, said.append)
    assert said == []
    network.wait_until_up(net, 0.05, said.append)
    assert said == ["network: not up after 0.05 s (starting): starting the core without it"]
    net._record(network.State("up", "eth0", "10.0.2.15/24"))
    said.clear()
    network.wait_until_up(net, 5, said.append)
    assert said == []
