"""The network, when the image asks for it (``make image NETWORK=dhcp``): a thread of the
init, so the core never waits for it (unless NETWORK_WAIT= says so).

The first wired interface whose link comes up gets DHCPv4: the address, its subnet and
the default route are set with the kernel's ioctls, the DNS servers go to
/etc/resolv.conf, and the lease is renewed at T1 (and again until it ends, when the
address is dropped and discovery starts over). The state is kept for the core in
/run/appliance/network (``key=value`` lines; ``APPLIANCE_NETWORK`` names the file) and
said on the console: ``init: network: eth0 10.0.2.15/24 via 10.0.2.2``.

Plain UDP on port 68 with SO_BINDTODEVICE and the broadcast flag set: the kernel sends
a limited broadcast from an interface without an address, and takes the server's
broadcast answer, with no packet socket.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from appliance.init import dhcp
from appliance.init.machine import interface_up
from appliance.initconf import NETWORK_STATE

SYS_NET = "/sys/class/net"
RESOLV_CONF = "/etc/resolv.conf"
SIOCSIFADDR, SIOCSIFNETMASK, SIOCADDRT = 0x8916, 0x891C, 0x890B
RTF_UP, RTF_GATEWAY = 0x1, 0x2
RTENTRY = "L16s16s16sHhLPhPLLH6x"  # struct rtentry on x86-64 (120 bytes)
NO_NIC_AFTER = 10.0  # seconds without any interface before saying so
DISCOVER_TRIES = (1.0, 2.0, 4.0, 4.0)  # waits for an answer; then a pause, and discovery again
RETRY_PAUSE = 10.0


class State(NamedTuple):
    state: str  # starting, up, down
    interface: str = ""
    address: str = ""  # with its prefix: 10.0.2.15/24
    gateway: str = ""
    dns: tuple[str, ...] = ()
    why: str = ""  # for down

    def text(self) -> str:
        return (f"state={self.state}\ninterface={self.interface}\naddress={self.address}\n"
                f"gateway={self.gateway}\ndns={' '.join(self.dns)}\nwhy={self.why}\n")


def wired_interfaces(sys_net: str = SYS_NET) -> list[str]:
    """Interfaces with a device behind them (not lo, not virtual), in name order."""
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return []
    return [n for n in names if n != "lo" and os.path.exists(os.path.join(sys_net, n, "device"))
            and not os.path.exists(os.path.join(sys_net, n, "wireless"))]


def carrier(name: str, sys_net: str = SYS_NET) -> bool:
    try:
        with open(os.path.join(sys_net, name, "carrier")) as f:
            return f.read().strip() == "1"
    except OSError:  # EINVAL while the interface is down
        return False


def mac_address(name: str, sys_net: str = SYS_NET) -> bytes:
    with open(os.path.join(sys_net, name, "address")) as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def _sockaddr(ip: str) -> bytes:
    return struct.pack("HH4s8x", socket.AF_INET, 0, ipaddress.IPv4Address(ip).packed)


def _ifreq_addr(name: str, ip: str) -> bytes:
    return name.encode()[:15].ljust(16, b"\0") + _sockaddr(ip) + bytes(8)


def configure(name: str, address: str, prefix: int, gateway: str) -> None:
    """Address, subnet (its route comes with it) and default route; OSError if refused."""
    mask = str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCSIFADDR, _ifreq_addr(name, address))
        fcntl.ioctl(s.fileno(), SIOCSIFNETMASK, _ifreq_addr(name, mask))
        if gateway:
            route = struct.pack(RTENTRY, 0, _sockaddr("0.0.0.0"), _sockaddr(gateway), _sockaddr("0.0.0.0"),
                                RTF_UP | RTF_GATEWAY, 0, 0, 0, 0, 0, 0, 0, 0)
            try:
                fcntl.ioctl(s.fileno(), SIOCADDRT, route)
            except FileExistsError:
                pass


def unconfigure(name: str) -> None:
    """Drop the interface's IPv4 address (0.0.0.0 deletes it), and the routes with it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCSIFADDR, _ifreq_addr(name, "0.0.0.0"))


def resolv_conf(servers: tuple[str, ...]) -> str:
    return "".join(f"nameserver {s}\n" for s in servers) or "# no DNS server from DHCP\n"


class Client:
    """DHCP on one interface. ``exchange`` sends and waits for one answer."""

    def __init__(self, name: str, hostname: str) -> None:
        self.name, self.hostname = name, hostname
        self.mac = mac_address(name)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())
        self.sock.bind(("0.0.0.0", dhcp.CLIENT_PORT))

    def close(self) -> None:
        self.sock.close()

    def exchange(self, packet: bytes, xid: int, wait: float, to: str = "255.255.255.255") -> dhcp.Reply | None:
        self.sock.sendto(packet, (to, dhcp.SERVER_PORT))
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            data = self.sock.recv(4096)
            reply = dhcp.parse(data, xid, self.mac)
            if reply is not None:
                return reply
        return None

    def obtain(self) -> dhcp.Reply | None:
        """DISCOVER, OFFER, REQUEST, ACK: a lease, or None after the tries."""
        for wait in DISCOVER_TRIES:
            xid = int.from_bytes(os.urandom(4), "big")
            offer = self.exchange(dhcp.request(dhcp.DISCOVER, xid, self.mac, self.hostname), xid, wait)
            if offer is None or offer.kind != dhcp.OFFER:
                continue
            ack = self.exchange(dhcp.request(dhcp.REQUEST, xid, self.mac, self.hostname, requested=offer.address,
                                             server=offer.server), xid, wait)
            if ack is not None and ack.kind == dhcp.ACK:
                return ack
        return None

    def renew(self, lease: dhcp.Reply) -> dhcp.Reply | None:
        xid = int.from_bytes(os.urandom(4), "big")
        packet = dhcp.request(dhcp.REQUEST, xid, self.mac, self.hostname, ciaddr=lease.address)
        reply = self.exchange(packet, xid, 4.0)
        return reply if reply is not None and reply.kind == dhcp.ACK else None


class Network:
    """The thread: find a link, lease, keep the lease; say and record every change."""

    def __init__(self, say: Callable[[str], None], hostname: str, state_path: str = NETWORK_STATE,
                 resolv: str = RESOLV_CONF, on_lease: Callable[[dhcp.Reply], object] = lambda lease: None) -> None:
        self.say, self.hostname = say, hostname
        self.on_lease = on_lease  # before the network is said up: the clock set from a time server
        self.state_path = state_path
        self.resolv = resolv
        self.up = threading.Event()
        self.state = State("starting")
        os.makedirs(os.path.dirname(state_path), exist_ok=True)
        self._record(self.state)

    def start(self) -> None:
        threading.Thread(target=self._run, name="network", daemon=True).start()

    def _record(self, state: State) -> None:
        self.state = state
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(state.text())
        os.replace(tmp, self.state_path)
        if state.state == "up":
            self.up.set()
        else:
            self.up.clear()

    def _down(self, why: str, interface: str = "") -> None:
        if self.state.state != "down" or self.state.why != why:
            self.say(f"network: {why}")
        self._record(State("down", interface, why=why))

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # noqa: BLE001 - the network must never take the init down
            self._down(f"stopped by a bug: {type(e).__name__}: {e}")

    def _link(self) -> str:
        """Wait for the first interface with a link (said once when there is none)."""
        started = time.monotonic()
        said_no_nic = said_no_link = False
        while True:
            names = wired_interfaces()
            for name in names:
                try:
                    interface_up(name)
                except OSError:
                    continue
            up = [n for n in names if carrier(n)]
            if up:
                return up[0]
            waited = time.monotonic() - started
            if not names and waited > NO_NIC_AFTER and not said_no_nic:
                said_no_nic = True
                self._down("no network interface (no wired NIC that the image has a driver for)")
            elif names and waited > NO_NIC_AFTER and not said_no_link:
                said_no_link = True
                self._down(f"no link on {', '.join(names)} (is a cable in?)")
            time.sleep(0.5)

    def _loop(self) -> None:
        while True:
            name = self._link()
            client = Client(name, self.hostname)
            try:
                self._lease_on(client)
            finally:
                client.close()

    def _lease_on(self, client: Client) -> None:
        name = client.name
        lease = client.obtain()
        if lease is None:
            self._down(f"no answer to DHCP on {name}; trying again every {RETRY_PAUSE:g} s", name)
            time.sleep(RETRY_PAUSE)
            return
        gateway = lease.routers[0] if lease.routers else ""
        try:
            configure(name, lease.address, lease.prefix, gateway)
        except OSError as e:
            self._down(f"could not set {lease.address}/{lease.prefix} on {name}: {e.strerror}", name)
            time.sleep(RETRY_PAUSE)
            return
        try:
            with open(self.resolv, "w") as f:
                f.write(resolv_conf(lease.dns))
        except OSError as e:
            self.say(f"network: could not write {self.resolv}: {e.strerror}")
        via = f" via {gateway}" if gateway else " (no router)"
        dns = f", DNS {' '.join(lease.dns)}" if lease.dns else ", no DNS server"
        self.say(f"network: {name} {lease.address}/{lease.prefix}{via}{dns}, lease {lease.lease} s")
        try:
            self.on_lease(lease)
        except Exception as e:  # noqa: BLE001 - the network must never fail for what it is used for
            self.say(f"network: BUG: after the lease: {type(e).__name__}: {e}")
        self._record(State("up", name, f"{lease.address}/{lease.prefix}", gateway, lease.dns))
        self._keep(client, lease)

    def _keep(self, client: Client, lease: dhcp.Reply) -> None:
        """Renew from T1 until the lease ends; then drop the address."""
        obtained = time.monotonic()
        renew_at = obtained + lease.t1
        while True:
            if not carrier(client.name):
                unconfigure(client.name)
                self._down(f"link lost on {client.name}: address {lease.address} dropped", client.name)
                return
            now = time.monotonic()
            if now >= obtained + lease.lease:
                unconfigure(client.name)
                self._down(f"lease of {lease.address} on {client.name} ended without renewal: address dropped",
                           client.name)
                return
            if now >= renew_at:
                renewed = client.renew(lease)
                if renewed is not None and renewed.address == lease.address:
                    lease, obtained = renewed, time.monotonic()
                    renew_at = obtained + lease.t1
                    continue
                renew_at = now + max(5.0, (obtained + lease.lease - now) / 2)
            time.sleep(min(1.0, max(0.1, renew_at - time.monotonic())))


def wait_until_up(net: Network, seconds: float, say: Callable[[str], None]) -> None:
    """NETWORK_WAIT=: hold the core back until the network is up, at most ``seconds``."""
    if seconds <= 0:
        return
    if net.up.wait(seconds):
        return
    say(f"network: not up after {seconds:g} s ({net.state.why or net.state.state}): starting the core without it")



def start_if_asked(mode: str, wait: float, say: Callable[[str], None], load_drivers: Callable[[], None],
                   on_lease: Callable[[dhcp.Reply], object] = lambda lease: None) -> None:
    """The init's step: start the thread when the image asks for a network; with a wait,
    load the NIC drivers now (they otherwise wait until the core has started) and wait."""
    if mode == "off":
        return
    if mode != "dhcp":
        say(f"network: unknown mode {mode!r} (dhcp or off): no network")
        return
    net = Network(say, socket.gethostname(), on_lease=on_lease)
    net.start()
    if wait > 0:
        load_drivers()
        wait_until_up(net, wait, say)
