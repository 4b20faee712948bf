"""A DHCP server for guests with static leases only (RFC 2131 messages, RFC 2132 options).

Why a small server in Python rather than ``dnsmasq``: every lease is static (IPAM has already chosen the
address, the MAC is the VM's), so the protocol needed is four messages (DISCOVER -> OFFER,
REQUEST -> ACK or NAK, INFORM -> ACK) and about 200 lines; it runs in the agent's event loop, so there is
no second daemon per node to supervise, configure through files and reload with signals, and a lease
exists exactly while the agent has attached the VM. No well-kept PyPI library serves DHCP (the candidates
are unmaintained or are packet toolkits such as scapy); ``dnsmasq`` would be the choice if dynamic pools,
relays or DHCPv6 were needed.

How it listens: one UDP socket per served interface (the node bridge for bridge-bound guests, a VM's own
tap for masquerade-bound guests), bound to ``0.0.0.0:67`` with ``SO_BINDTODEVICE``, so several sockets
share port 67 and each knows which interface a request came from. Sockets are created inside the node's
network namespace (:func:`kubevisor.network.netns.socket`) and served by the caller's event loop.
Replies go to the limited broadcast address (a client without an address cannot answer ARP), or by
unicast to ``ciaddr`` when a configured client renews. Relayed requests (``giaddr`` set) and clients
without a lease on that interface are ignored, so another DHCP server on the segment can answer them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import cast

from kubevisor.network import netns as _netns
from kubevisor.network.errors import NetworkError

__all__ = [
    "ACK",
    "DISCOVER",
    "INFORM",
    "NAK",
    "OFFER",
    "REQUEST",
    "Lease",
    "Message",
    "Server",
    "normalize_mac",
    "reply_to",
]

log = logging.getLogger(__name__)

SERVER_PORT = 67
CLIENT_PORT = 68
BOOTREQUEST, BOOTREPLY = 1, 2
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BROADCAST_FLAG = 0x8000
ZERO = IPv4Address(0)
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")

# Message types (option 53).
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)

# Options (RFC 2132).
OPT_PAD, OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME = 0, 1, 3, 6, 12
OPT_MTU, OPT_BROADCAST = 26, 28
OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_MESSAGE_TYPE, OPT_SERVER_ID = 50, 51, 53, 54
OPT_RENEWAL_TIME, OPT_REBINDING_TIME, OPT_END = 58, 59, 255


def normalize_mac(mac: str) -> str:
    """``mac`` as six lower-case, colon-separated hex octets; ``ValueError`` if it is not a MAC."""
    octets = mac.replace("-", ":").lower().split(":")
    if len(octets) != 6 or not all(len(o) == 2 and all(c in "0123456789abcdef" for c in o) for o in octets):
        raise ValueError(f"{mac!r} is not a MAC address (expected six hex octets, e.g. 02:00:00:00:00:01)")
    return ":".join(octets)


@dataclass(frozen=True)
class Lease:
    """What one client (by MAC) is given."""

    mac: str
    """The client's MAC address (normalized)."""
    address: IPv4Address
    """Its address."""
    network: IPv4Network
    """The subnet it is on (gives the subnet mask and broadcast options)."""
    router: IPv4Address
    """Its default gateway; also this server's identifier (the server's address on that interface)."""
    dns: tuple[IPv4Address, ...] = ()
    """DNS servers (option 6), if any."""
    hostname: str | None = None
    """Host name offered to the client (option 12)."""
    mtu: int | None = None
    """Interface MTU (option 26), if not the default 1500."""
    seconds: int = 86400
    """Lease time; clients renew at half of it. The lease is static, so renewals always succeed."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", normalize_mac(self.mac))
        if self.address not in self.network or self.router not in self.network:
            raise ValueError(
                f"lease for {self.mac}: {self.address} and {self.router} must be in {self.network}"
            )


@dataclass
class Message:
    """A BOOTP/DHCP message (RFC 2131 section 2). Options keep their raw bytes."""

    op: int
    xid: int
    chaddr: str
    """Client hardware address (normalized MAC)."""
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = ZERO
    yiaddr: IPv4Address = ZERO
    siaddr: IPv4Address = ZERO
    giaddr: IPv4Address = ZERO
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> int | None:
        """Option 53, or ``None`` for a plain BOOTP message."""
        value = self.options.get(OPT_MESSAGE_TYPE)
        return value[0] if value and len(value) == 1 else None

    def address_option(self, code: int) -> IPv4Address | None:
        """An option holding one IPv4 address, if present and well formed."""
        value = self.options.get(code)
        return IPv4Address(value) if value is not None and len(value) == 4 else None

    def encode(self) -> bytes:
        """The message on the wire (message type first among the options, padded to 300 bytes)."""
        chaddr = bytes.fromhex(self.chaddr.replace(":", "")).ljust(16, b"\0")
        head = _HEADER.pack(
            self.op, self.htype, self.hlen, self.hops, self.xid, self.secs, self.flags,
            self.ciaddr.packed, self.yiaddr.packed, self.siaddr.packed, self.giaddr.packed,
            chaddr, b"", b"",
        )  # fmt: skip
        body = bytearray(MAGIC_COOKIE)
        for code in sorted(self.options, key=lambda c: (c != OPT_MESSAGE_TYPE, c)):
            value = self.options[code]
            for start in range(0, max(len(value), 1), 255):  # RFC 3396: long options are split
                chunk = value[start : start + 255]
                body += bytes((code, len(chunk))) + chunk
        body.append(OPT_END)
        packet = head + bytes(body)
        return packet.ljust(300, b"\0")  # BOOTP minimum; some clients drop shorter replies

    @classmethod
    def decode(cls, data: bytes) -> Message:
        """Parse a message; ``ValueError`` if it is not a DHCP message with an Ethernet address."""
        if len(data) < _HEADER.size + len(MAGIC_COOKIE):
            raise ValueError(f"{len(data)} bytes is too short for a DHCP message")
        op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, chaddr, _, _ = _HEADER.unpack_from(data)
        if data[_HEADER.size : _HEADER.size + 4] != MAGIC_COOKIE:
            raise ValueError("no DHCP magic cookie (plain BOOTP)")
        if htype != 1 or hlen != 6:
            raise ValueError(f"hardware type {htype}/length {hlen} is not Ethernet")
        options: dict[int, bytes] = {}
        i = _HEADER.size + 4
        while i < len(data):
            code = data[i]
            if code == OPT_END:
                break
            if code == OPT_PAD:
                i += 1
                continue
            if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
                raise ValueError(f"option {code} runs past the end of the message")
            length = data[i + 1]
            options[code] = options.get(code, b"") + data[i + 2 : i + 2 + length]  # RFC 3396 concat
            i += 2 + length
        return cls(
            op=op, xid=xid, chaddr=":".join(f"{b:02x}" for b in chaddr[:6]), secs=secs, flags=flags,
            ciaddr=IPv4Address(ci), yiaddr=IPv4Address(yi), siaddr=IPv4Address(si), giaddr=IPv4Address(gi),
            htype=htype, hlen=hlen, hops=hops, options=options,
        )  # fmt: skip


def reply_to(request: Message, lease: Lease | None) -> Message | None:
    """The answer to ``request`` from a server that holds ``lease`` for its client; ``None`` when the
    server must stay silent (not its client, a relayed request, a message servers never answer)."""
    kind = request.message_type
    if request.op != BOOTREQUEST or lease is None or request.giaddr != ZERO:
        return None
    server_id = lease.router
    if kind == DISCOVER:
        return _reply(request, lease, OFFER)
    if kind == REQUEST:
        chosen = request.address_option(OPT_SERVER_ID)
        if chosen is not None and chosen != server_id:
            return None  # the client took another server's offer
        wanted = request.address_option(OPT_REQUESTED_IP) or request.ciaddr
        if wanted != lease.address:
            nak = Message(BOOTREPLY, request.xid, request.chaddr, flags=request.flags)
            nak.options = {OPT_MESSAGE_TYPE: bytes((NAK,)), OPT_SERVER_ID: server_id.packed}
            return nak
        return _reply(request, lease, ACK)
    if kind == INFORM:
        return _reply(request, lease, ACK, inform=True)
    return None  # DECLINE, RELEASE: the lease is static, nothing to do; BOOTP: not served


def _reply(request: Message, lease: Lease, kind: int, *, inform: bool = False) -> Message:
    reply = Message(
        BOOTREPLY, request.xid, request.chaddr, flags=request.flags, ciaddr=request.ciaddr,
        yiaddr=ZERO if inform else lease.address,
    )  # fmt: skip
    options = {
        OPT_MESSAGE_TYPE: bytes((kind,)),
        OPT_SERVER_ID: lease.router.packed,
        OPT_SUBNET_MASK: lease.network.netmask.packed,
        OPT_ROUTER: lease.router.packed,
        OPT_BROADCAST: lease.network.broadcast_address.packed,
    }
    if not inform:
        options[OPT_LEASE_TIME] = struct.pack("!I", lease.seconds)
        options[OPT_RENEWAL_TIME] = struct.pack("!I", lease.seconds // 2)
        options[OPT_REBINDING_TIME] = struct.pack("!I", lease.seconds * 7 // 8)
    if lease.dns:
        options[OPT_DNS] = b"".join(a.packed for a in lease.dns)
    if lease.hostname:
        options[OPT_HOSTNAME] = lease.hostname.encode()
    if lease.mtu:
        options[OPT_MTU] = struct.pack("!H", lease.mtu)
    reply.options = options
    return reply


def _destination(request: Message, reply: Message) -> tuple[str, int]:
    if reply.message_type != NAK and request.ciaddr != ZERO:
        return str(request.ciaddr), CLIENT_PORT  # a configured client renewing
    return "255.255.255.255", CLIENT_PORT


class _Endpoint(asyncio.DatagramProtocol):
    """Port 67 on one interface, with the leases of the clients on it."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.leases: dict[str, Lease] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (Python 3.11's selector transport does not subclass DatagramTransport, but is one.)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            request = Message.decode(data)
        except ValueError as e:
            log.debug("%s: ignoring a malformed DHCP message from %s: %s", self.interface, addr, e)
            return
        reply = reply_to(request, self.leases.get(request.chaddr))
        if reply is None or self.transport is None:
            return
        log.info(
            "%s: DHCP type %s from %s -> type %s %s",
            self.interface, request.message_type, request.chaddr, reply.message_type, reply.yiaddr,
        )  # fmt: skip
        self.transport.sendto(reply.encode(), _destination(request, reply))

    def error_received(self, exc: Exception) -> None:
        log.warning("%s: DHCP socket error: %s", self.interface, exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class Server:
    """Static-lease DHCP service on any number of interfaces of one network namespace.

    An interface is served while it has at least one lease: :meth:`set_lease` opens its socket on first
    use and :meth:`forget` closes it with the last lease, so a deleted tap leaves no socket behind.
    """

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns
        """The network namespace the interfaces are in (``None``: this process's)."""
        self._endpoints: dict[str, _Endpoint] = {}
        self._lock = asyncio.Lock()

    def leases(self) -> dict[str, list[Lease]]:
        """Interface -> its leases."""
        return {name: list(ep.leases.values()) for name, ep in self._endpoints.items()}

    async def set_lease(self, interface: str, lease: Lease) -> None:
        """Serve ``lease`` on ``interface`` (replacing any lease for the same MAC there)."""
        async with self._lock:
            endpoint = self._endpoints.get(interface)
            if endpoint is None:
                endpoint = await self._open(interface)
                self._endpoints[interface] = endpoint
            endpoint.leases[lease.mac] = lease

    async def forget(self, *, address: IPv4Address | None = None, interface: str | None = None) -> None:
        """Drop the leases of ``address`` (on any interface) and every lease on ``interface``; close the
        sockets of interfaces left without leases. Idempotent."""
        async with self._lock:
            for name, endpoint in list(self._endpoints.items()):
                if name == interface:
                    endpoint.leases.clear()
                elif address is not None:
                    endpoint.leases = {m: le for m, le in endpoint.leases.items() if le.address != address}
                if not endpoint.leases:
                    endpoint.close()
                    del self._endpoints[name]

    async def close(self) -> None:
        """Stop serving every interface."""
        async with self._lock:
            for endpoint in self._endpoints.values():
                endpoint.close()
            self._endpoints.clear()

    async def _open(self, interface: str) -> _Endpoint:
        sock = _netns.socket(self.netns, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            sock.bind(("0.0.0.0", SERVER_PORT))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise NetworkError(f"DHCP server on {interface} (netns {self.netns}): {e}") from e
        endpoint = _Endpoint(interface)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        return endpoint
