"""NETWORK=dhcp in QEMU: user networking with restrict=on (nothing leaves this machine),
a file served by the test on the host's loopback and reached through QEMU's forwarding."""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from appliance.harness.machine import Machine
from appliance.harness.qemu import silent_network, user_network
from tests.helpers import act

pytestmark = pytest.mark.qemu


@pytest.fixture
def served(tmp_path: Path) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 (a free port), serving hello.txt."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_text("hello from the host's loopback\n")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("nic", ["virtio-net-pci", "e1000e"])  # virtio-net, and an Intel NIC as PCs have
def test_the_core_gets_a_lease_and_fetches_a_file_from_the_host(
        nic: str, test_net_raw: Path, qemu_ready: None, served: int, tmp_path: Path, log_dir: Path) -> None:
    m = Machine(test_net_raw, tmp_path / "m", name=f"network-dhcp-{nic}", log_dir=log_dir,
                nic=user_network({"10.0.2.100:8080": served}, nic=nic))
    act(m, b"net-fetch http://10.0.2.100:8080/hello.txt")
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"init: core started", 60)  # the core does not wait for the lease
        # restrict=on: QEMU's DHCP server offers no router and no DNS server (libslirp leaves
        # them out), so the file comes from the subnet itself, through guestfwd.
        m.expect(r"init: network: eth0 10\.0\.2\.15/24 \(no router\), no DNS server, lease \d+ s", 60)
        m.expect(r"matrix core: network up eth0 10\.0\.2\.15/24 gateway  dns \r*\n", 60)
        m.expect(r"matrix core: resolv.conf: # no DNS server from DHCP", 10)
        m.expect(r"matrix core: fetched http://10\.0\.2\.100:8080/hello\.txt: hello from the host's loopback", 60)
        m.power_cut()
    console = m.log_path.read_text(errors="replace")
    assert console.index("init: core started") < console.index("init: network: eth0")


@pytest.mark.parametrize("nic, why", [
    ((), r"no network interface \(no wired NIC that the image has a driver for\)"),
    (silent_network(), r"no answer to DHCP on eth0; trying again every 10 s"),
])
def test_without_a_nic_or_a_dhcp_answer_the_core_starts_on_time_and_the_console_says_why(
        nic: tuple[str, ...], why: str, test_net_raw: Path, qemu_ready: None, tmp_path: Path,
        log_dir: Path) -> None:
    m = Machine(test_net_raw, tmp_path, name=f"network-{'silent' if nic else 'none'}", log_dir=log_dir, nic=nic)
    with m:
        m.wait_boot(timeout=120)
        m.expect(r"matrix core: ready", 60)
        m.expect(rf"init: network: {why}", 90)
        m.power_cut()
    console = m.log_path.read_text(errors="replace")
    assert re.search(r"init: network: \S+ \d", console) is None  # no address was ever said


def test_a_dead_rtc_is_set_from_the_time_server_dhcp_names(
        test_net_raw: Path, qemu_ready: None, tmp_path: Path, log_dir: Path) -> None:
    """On a network of the test's own (a namespace with a tap: UDP cannot pass QEMU's
    restricted user network), dnsmasq's lease names chronyd as the time server: the
    clock, at 2001 from the RTC, goes to the build's time, then to this machine's time
    (within 2 s) before the network counts as up, and the RTC is written."""
    from appliance.harness import tapnet
    why = tapnet.available()
    if why:
        pytest.skip(why)
    with tapnet.TapNetwork(tmp_path / "net") as net:
        m = Machine(test_net_raw, tmp_path / "m", name="network-time", log_dir=log_dir,
                    nic=(*net.nic, "-rtc", "base=2001-01-01"), wrapper=net.wrapper)
        act(m, b"clock-after-network")
        with m:
            m.wait_boot(timeout=120)
            m.expect(r"init: clock: 2001-01-01T\S+ from the RTC is before the image's build: set to ", 60)
            m.expect(r"init: network: eth0 10\.9\.0\.\d+/24 [^\n]*lease 3600 s", 90)
            m.expect(r"init: clock: \S+ from SNTP 10\.9\.0\.1 \(stratum 8, \+\d+\.\d+ s, round trip \d+ ms\); "
                     r"RTC written", 30)
            seen = float(m.expect(r"matrix core: clock after the network (\d+\.\d+)\r*\n", 60).group(1))
            assert abs(seen - time.time()) < 2
            m.power_cut()
