"""The pure parts of the pod network: names, derived addresses, argument lists, the nft table."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from kubevisor.network import bindings, ip, netns, nft, podnet
from kubevisor.network.errors import ConfigError, NetnsError
from kubevisor.network.podnet import NodeNetwork, Port

NETWORK = NodeNetwork(IPv4Network("10.244.0.0/24"), netns="kvtest-x-node")


def test_tap_names_fit_the_kernel_limit_and_are_stable() -> None:
    names = {podnet.tap_name(f"9b1c0a3e-0000-4000-8000-{i:012d}") for i in range(1000)}
    assert len(names) == 1000
    assert all(len(n) == 15 and n.startswith("tap") and ip.check_name(n) == n for n in names)
    assert podnet.tap_name("uid") == podnet.tap_name("uid")


def test_macs_are_locally_administered_unicast_and_stable() -> None:
    for mac in (bindings.mac_address("a"), bindings.mac_address("b"), podnet.bridge_mac(NETWORK)):
        first = int(mac.split(":")[0], 16)
        assert first & 0b10 and not first & 0b1, mac
    assert bindings.mac_address("a") == bindings.mac_address("a") != bindings.mac_address("b")


def test_node_network_derives_gateway_and_masquerade_links() -> None:
    assert NETWORK.gateway == IPv4Interface("10.244.0.1/24")
    assert NETWORK.masquerade_link(IPv4Address("10.244.0.5")) == IPv4Network("100.64.0.20/30")
    assert NETWORK.masquerade_link(IPv4Address("10.244.0.254")) == IPv4Network("100.64.3.248/30")
    links = {NETWORK.masquerade_link(a) for a in NETWORK.pod_cidr.hosts()}
    assert len(links) == 254 and all(link.subnet_of(NETWORK.masquerade_cidr) for link in links)
    with pytest.raises(ConfigError, match="not in pod CIDR"):
        NETWORK.masquerade_link(IPv4Address("10.245.0.5"))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"pod_cidr": IPv4Network("10.244.0.0/31")}, "at least a /30"),
        ({"pod_cidr": IPv4Network("10.0.0.0/14")}, r"too small.*needs a /12"),
        ({"masquerade_cidr": IPv4Network("10.244.0.0/16")}, "overlaps"),
        ({"bridge": "a-name-that-is-too-long"}, "1 to 15 characters"),
    ],
)
def test_node_network_rejects_settings_that_cannot_work(kwargs: dict[str, object], error: str) -> None:
    settings: dict[str, object] = {"pod_cidr": IPv4Network("10.244.0.0/24"), **kwargs}
    with pytest.raises(ConfigError, match=error):
        NodeNetwork(**settings)  # type: ignore[arg-type]


def test_ports() -> None:
    assert Port(80, "TCP") == Port(80)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="between 1 and 65535"):
        Port(0)
    with pytest.raises(ConfigError, match="SCTP"):
        Port(80, "SCTP")  # type: ignore[arg-type]


def test_argument_lists_never_go_through_a_shell() -> None:
    assert ip.argv(["link", "show"], netns="ns1", as_json=True) == [
        "ip",
        "-n",
        "ns1",
        "-json",
        "link",
        "show",
    ]
    assert ip.argv(["link", "show"]) == ["ip", "link", "show"]
    assert ip.add_tap_args("tap0123") == ["tuntap", "add", "dev", "tap0123", "mode", "tap"]
    assert ip.add_bridge_args("kv0", mac="02:00:00:00:00:01")[:5] == [
        "link",
        "add",
        "kv0",
        "address",
        "02:00:00:00:00:01",
    ]
    assert nft.argv(["-f", "-"], netns="ns1") == ["ip", "netns", "exec", "ns1", "nft", "-j", "-f", "-"]
    for bad in ("", "x" * 16, "a b", "a/b", "a:b"):
        with pytest.raises(ConfigError):
            ip.check_name(bad)
    assert ip.check_name("$(reboot)") == "$(reboot)"  # harmless: an argv element, no shell ever sees it
    with pytest.raises(NetnsError):
        netns.exec_prefix("../etc")


def test_node_ruleset_is_one_table_with_kubevisor_chains_and_maps() -> None:
    commands = podnet.node_ruleset(NETWORK)
    added = [
        (kind, spec.get("name"))
        for c in commands
        for verb, obj in c.items()
        if verb == "add"
        for kind, spec in obj.items()
    ]
    assert ("table", "kubevisor") in added
    assert {name for kind, name in added if kind in ("map", "set")} == {
        "masq_ips",
        "masq_all",
        "masq_ports",
        "masq_snat",
    }
    assert {name for kind, name in added if kind == "chain"} == {
        "prerouting",
        "output",
        "postrouting",
        "input",
    }
    flushed = [obj["chain"]["name"] for c in commands for verb, obj in c.items() if verb == "flush"]
    assert sorted(flushed) == ["input", "output", "postrouting", "prerouting"]  # rules reset, elements kept
    assert all(spec["family"] == "inet" for c in commands for obj in c.values() for spec in obj.values())
