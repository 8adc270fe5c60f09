"""SNTP and the clock it sets, against a real chronyd on the loopback (make deps unpacks it)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.harness import timeserver
from appliance.init import dhcp, sntp
from appliance.init.clock import WallClock

BUILT = 1_796_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[timeserver.TimeServer]:
    why = timeserver.available()
    if why:
        pytest.fail(f"{why}: make test installs it first")
    t = timeserver.TimeServer(tmp_path_factory.mktemp("chrony")).start()
    yield t
    t.stop()


class Behind:
    """A clock an hour behind this machine's, which the test sets."""

    def __init__(self, by: float = 3600.0) -> None:
        self.by = by
        self.rtc: list[float] = []

    def __call__(self) -> float:
        return time.time() - self.by

    def set(self, t: float) -> None:
        self.by = time.time() - t

    def write_rtc(self, t: float) -> None:
        self.rtc.append(t)


def test_a_real_server_gives_this_machines_time(server: timeserver.TimeServer) -> None:
    sample = sntp.query(server.address, server.port)
    assert sample.stratum == 8 and abs(sample.offset) < 0.5 and 0 <= sample.delay < 0.5


def test_a_clock_behind_is_set_from_the_server_and_the_rtc_written(server: timeserver.TimeServer) -> None:
    said: list[str] = []
    clock = Behind()
    wall = WallClock(said.append, clock, clock.set, clock.write_rtc)
    wall.check(None, BUILT)
    assert wall.sync(["10.255.255.1:bad", server.server])
    assert abs(clock() - time.time()) < 2  # within 2 s of this machine's clock
    assert len(clock.rtc) == 1 and abs(clock.rtc[0] - time.time()) < 2
    assert said[-2].startswith("clock: no time from 10.255.255.1:bad")
    assert said[-1].startswith("clock: ") and f"from SNTP {server.server} (stratum 8, +3600." in said[-1]
    assert said[-1].endswith("; RTC written")


def test_a_server_before_the_floor_is_not_believed_and_silence_is_said(server: timeserver.TimeServer) -> None:
    said: list[str] = []
    clock = Behind(-10 * 86400.0)  # ten days ahead: the floor a saved time would give
    wall = WallClock(said.append, clock, clock.set, clock.write_rtc)
    wall.floor, wall.floor_is = clock(), "the time this machine last saved"
    silent = f"127.0.0.1:{timeserver.free_udp_port()}"
    assert not wall.sync([server.server, silent])
    assert "before the time this machine last saved: not believed" in said[0]
    assert said[1].startswith(f"clock: no time from {silent}: ")
    assert clock.rtc == []
    assert not wall.sync([]) and "no time server" in said[-1]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100), st.binary(min_size=8, max_size=8))
def test_any_answer_is_a_sample_or_a_reason(data: bytes, sent: bytes) -> None:
    try:
        sample = sntp.parse(data, sent, 1.8e9, 1.8e9 + 0.01)
    except sntp.SntpError:
        return
    assert -1.0 <= sample.delay <= 10.0


def test_a_forged_answer_is_refused() -> None:
    t1 = 1.8e9
    packet = sntp.request(t1)
    good = bytearray(sntp.PACKET.pack(4 << 3 | 4, 2, 0, 0, bytes(4), bytes(4), bytes(4), bytes(8), packet[40:48],
                                      sntp.to_ntp(t1 + 5), sntp.to_ntp(t1 + 5)))
    assert sntp.parse(bytes(good), packet[40:48], t1, t1 + 0.02).offset == pytest.approx(4.99, abs=0.01)
    other = bytes(good[:24]) + sntp.to_ntp(t1 - 1) + bytes(good[32:])
    with pytest.raises(sntp.SntpError, match="another request"):
        sntp.parse(other, packet[40:48], t1, t1 + 0.02)
    alarm = bytes([3 << 6 | 4 << 3 | 4]) + bytes(good[1:])
    with pytest.raises(sntp.SntpError, match="not synchronised"):
        sntp.parse(alarm, packet[40:48], t1, t1 + 0.02)
    assert sntp.from_ntp(sntp.to_ntp(2_200_000_000.25)) == pytest.approx(2_200_000_000.25)  # past 2036


def test_dhcp_names_time_servers() -> None:
    from tests.test_network import MAC, reply
    opts = bytes([dhcp.OPT_TYPE, 1, dhcp.ACK, dhcp.OPT_NTP, 8, 10, 0, 2, 2, 192, 0, 2, 1, dhcp.OPT_END])
    got = dhcp.parse(reply(dhcp.ACK, opts=opts), 7, MAC)
    assert got is not None and got.ntp == ("10.0.2.2", "192.0.2.1")
    assert dhcp.OPT_NTP in dhcp.request(dhcp.DISCOVER, 1, MAC)[dhcp.HEADER.size + 4:]
