"""DHCP messages (RFC 2131/2132) and the static-lease server's answers, without sockets."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network

import pytest

from kubevisor.network import dhcp

MAC = "02:aa:bb:cc:dd:ee"
LEASE = dhcp.Lease(
    MAC.upper(),
    IPv4Address("10.244.0.7"),
    IPv4Network("10.244.0.0/24"),
    IPv4Address("10.244.0.1"),
    dns=(IPv4Address("10.96.0.10"), IPv4Address("10.96.0.11")),
    hostname="vm-a",
)


def request(kind: int, **fields: object) -> dhcp.Message:
    message = dhcp.Message(dhcp.BOOTREQUEST, 0x1234ABCD, MAC, **fields)  # type: ignore[arg-type]
    message.options[53] = bytes((kind,))
    return message


def test_encode_decode_round_trip() -> None:
    message = request(dhcp.REQUEST, flags=dhcp.BROADCAST_FLAG, ciaddr=IPv4Address("10.0.0.9"))
    message.options[50] = IPv4Address("10.244.0.7").packed
    message.options[43] = bytes(300)  # longer than one option: split and joined again (RFC 3396)
    wire = message.encode()
    assert len(wire) >= 300 and wire[236:240] == dhcp.MAGIC_COOKIE
    assert wire[240:243] == bytes((53, 1, dhcp.REQUEST))  # message type first
    assert dhcp.Message.decode(wire) == message


def test_decodes_a_udhcpc_discover_with_padding() -> None:
    header = (
        struct.pack("!BBBBIHH", 1, 1, 6, 0, 7, 0, 0) + bytes(16) + bytes.fromhex("02aabbccddee") + bytes(10)
    )
    wire = (
        header
        + bytes(192)
        + dhcp.MAGIC_COOKIE
        + bytes([0, 53, 1, 1, 0, 0, 61, 7, 1, 2, 170, 187, 204, 221, 238, 255])
    )
    message = dhcp.Message.decode(wire)
    assert (message.xid, message.chaddr, message.message_type) == (7, MAC, dhcp.DISCOVER)
    assert message.options[61] == bytes.fromhex("0102aabbccddee")


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"\x01" * 100, "too short"),
        (bytes(236) + b"nope", "magic cookie"),
        (struct.pack("!BBBB", 1, 6, 16, 0) + bytes(232) + dhcp.MAGIC_COOKIE, "not Ethernet"),
        (
            struct.pack("!BBBB", 1, 1, 6, 0) + bytes(232) + dhcp.MAGIC_COOKIE + bytes([53, 5, 1]),
            "past the end",
        ),
    ],
)
def test_rejects_malformed_messages(wire: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        dhcp.Message.decode(wire)


def options_of(reply: dhcp.Message | None) -> dict[int, bytes]:
    assert reply is not None
    return reply.options


def test_discover_gets_an_offer_with_router_subnet_and_dns() -> None:
    offer = dhcp.reply_to(request(dhcp.DISCOVER, flags=dhcp.BROADCAST_FLAG), LEASE)
    assert offer is not None
    assert (offer.op, offer.xid, offer.chaddr, offer.flags) == (
        dhcp.BOOTREPLY,
        0x1234ABCD,
        MAC,
        dhcp.BROADCAST_FLAG,
    )
    assert offer.yiaddr == IPv4Address("10.244.0.7")
    assert offer.message_type == dhcp.OFFER
    options = options_of(offer)
    assert options[1] == IPv4Address("255.255.255.0").packed
    assert options[3] == options[54] == IPv4Address("10.244.0.1").packed
    assert options[6] == IPv4Address("10.96.0.10").packed + IPv4Address("10.96.0.11").packed
    assert options[12] == b"vm-a"
    assert options[28] == IPv4Address("10.244.0.255").packed
    assert struct.unpack("!I", options[51])[0] == 86400
    assert struct.unpack("!I", options[58])[0] == 43200


def test_request_for_the_leased_address_is_acked() -> None:
    req = request(dhcp.REQUEST)
    req.options[50] = LEASE.address.packed
    req.options[54] = LEASE.router.packed
    ack = dhcp.reply_to(req, LEASE)
    assert ack is not None and ack.message_type == dhcp.ACK and ack.yiaddr == LEASE.address
    assert dhcp.reply_to(req, LEASE) == ack  # static: the same answer every time


def test_renewal_by_ciaddr_is_acked_and_answered_by_unicast() -> None:
    req = request(dhcp.REQUEST, ciaddr=LEASE.address)
    ack = dhcp.reply_to(req, LEASE)
    assert ack is not None and ack.message_type == dhcp.ACK and ack.ciaddr == LEASE.address
    assert dhcp._destination(req, ack) == ("10.244.0.7", 68)
    discover = request(dhcp.DISCOVER)
    offer = dhcp.reply_to(discover, LEASE)
    assert offer is not None and dhcp._destination(discover, offer) == ("255.255.255.255", 68)


def test_request_for_another_address_is_naked() -> None:
    req = request(dhcp.REQUEST)
    req.options[50] = IPv4Address("10.244.0.99").packed
    nak = dhcp.reply_to(req, LEASE)
    assert nak is not None and nak.message_type == dhcp.NAK and nak.yiaddr == dhcp.ZERO
    assert options_of(nak)[54] == LEASE.router.packed and 51 not in options_of(nak)


def test_inform_gets_options_but_no_address_or_lease_time() -> None:
    ack = dhcp.reply_to(request(dhcp.INFORM, ciaddr=LEASE.address), LEASE)
    assert ack is not None and ack.message_type == dhcp.ACK and ack.yiaddr == dhcp.ZERO
    assert 51 not in options_of(ack) and options_of(ack)[3] == LEASE.router.packed


def test_silence_where_another_server_should_answer() -> None:
    chose_other = request(dhcp.REQUEST)
    chose_other.options[54] = IPv4Address("10.244.0.254").packed
    assert dhcp.reply_to(chose_other, LEASE) is None
    assert dhcp.reply_to(request(dhcp.DISCOVER), None) is None  # not our client
    assert dhcp.reply_to(request(dhcp.DISCOVER, giaddr=IPv4Address("10.0.0.1")), LEASE) is None  # relayed
    assert dhcp.reply_to(request(dhcp.RELEASE), LEASE) is None
    assert dhcp.reply_to(request(dhcp.DECLINE), LEASE) is None
    bootp = dhcp.Message(dhcp.BOOTREQUEST, 1, MAC)
    assert dhcp.reply_to(bootp, LEASE) is None


def test_lease_validation() -> None:
    assert LEASE.mac == MAC  # normalized
    assert dhcp.normalize_mac("02-AA-BB-CC-DD-EE") == MAC
    for bad in ("02:aa:bb:cc:dd", "02:aa:bb:cc:dd:zz", "02aabbccddee"):
        with pytest.raises(ValueError, match="not a MAC"):
            dhcp.normalize_mac(bad)
    with pytest.raises(ValueError, match="must be in"):
        dhcp.Lease(MAC, IPv4Address("10.0.0.2"), IPv4Network("10.244.0.0/24"), IPv4Address("10.244.0.1"))
