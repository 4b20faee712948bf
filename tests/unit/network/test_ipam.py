"""IPAM: one address per owner, never one address for two owners, persisted atomically, shared safely
between instances, threads and processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubevisor.network.errors import AddressesExhausted, ConfigError, IpamError
from kubevisor.network.ipam import Ipam

CIDR = IPv4Network("10.244.0.0/24")


def test_allocate_is_idempotent_per_owner_and_skips_the_gateway(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.json", CIDR)
    first = ipam.allocate("default/a")
    assert first == IPv4Address("10.244.0.2")  # .0 is the network, .1 the bridge/gateway
    assert ipam.allocate("default/a") == first
    assert ipam.allocate("default/b") == IPv4Address("10.244.0.3")
    assert ipam.get("default/a") == first
    assert ipam.owner_of(IPv4Address("10.244.0.3")) == "default/b"
    assert ipam.allocations() == {"default/a": first, "default/b": IPv4Address("10.244.0.3")}


def test_state_survives_a_restart_and_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "node" / "ipam.json"
    Ipam(path, CIDR).allocate("default/a")
    data = json.loads(path.read_text())
    assert data == {
        "version": 1,
        "cidr": "10.244.0.0/24",
        "last": "10.244.0.2",
        "allocations": {"default/a": "10.244.0.2"},
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["ipam.json", "ipam.json.lock"]  # no temp files

    again = Ipam(path, CIDR)  # a new agent process
    assert again.get("default/a") == IPv4Address("10.244.0.2")
    assert again.allocate("default/b") == IPv4Address("10.244.0.3")


def test_released_addresses_are_reused_last(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.json", IPv4Network("10.0.0.0/29"))  # hosts .1-.6; .1 is the gateway
    assert [ipam.allocate(f"ns/vm{i}") for i in range(3)] == [IPv4Address(f"10.0.0.{i}") for i in (2, 3, 4)]
    assert ipam.release("ns/vm0") == IPv4Address("10.0.0.2")
    assert ipam.release("ns/vm0") is None  # idempotent
    assert ipam.allocate("ns/vm3") == IPv4Address("10.0.0.5")  # not .2: round robin
    assert ipam.allocate("ns/vm4") == IPv4Address("10.0.0.6")
    assert ipam.allocate("ns/vm5") == IPv4Address("10.0.0.2")  # wrapped around
    with pytest.raises(AddressesExhausted, match=r"10\.0\.0\.0/29"):
        ipam.allocate("ns/vm6")
    assert ipam.allocate("ns/vm1") == IPv4Address("10.0.0.3")  # holders still get theirs when full


def test_reserved_addresses_are_never_handed_out(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.json", IPv4Network("10.0.0.0/30"), reserved=[])
    assert ipam.allocate("ns/a") == IPv4Address("10.0.0.2")
    with pytest.raises(AddressesExhausted):
        ipam.allocate("ns/b")
    reserved = Ipam(tmp_path / "other.json", IPv4Network("10.0.1.0/29"), reserved=[IPv4Address("10.0.1.2")])
    assert reserved.allocate("ns/a") == IPv4Address("10.0.1.3")


def test_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="/30"):
        Ipam(tmp_path / "ipam.json", IPv4Network("10.0.0.0/31"))
    ipam = Ipam(tmp_path / "ipam.json", CIDR)
    for owner in ("", "noslash", "/name", "ns/", "a/b/c"):
        with pytest.raises(ValueError, match="namespace/name"):
            ipam.allocate(owner)


def test_a_changed_pod_cidr_or_a_broken_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    Ipam(path, CIDR).allocate("default/a")
    with pytest.raises(IpamError, match=r"pod CIDR 10\.244\.0\.0/24.*10\.245\.0\.0/24"):
        Ipam(path, IPv4Network("10.245.0.0/24")).allocate("default/b")

    path.write_text("{not json")
    with pytest.raises(IpamError, match=str(path)):
        Ipam(path, CIDR).get("default/a")

    twice = {
        "version": 1,
        "cidr": str(CIDR),
        "last": None,
        "allocations": {"a/x": "10.244.0.9", "b/y": "10.244.0.9"},
    }
    path.write_text(json.dumps(twice))
    with pytest.raises(IpamError, match="held by both"):
        Ipam(path, CIDR).allocate("c/z")


def test_an_empty_store_may_change_cidr(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    old = Ipam(path, CIDR)
    old.allocate("default/a")
    old.release("default/a")
    assert Ipam(path, IPv4Network("10.245.0.0/24")).allocate("default/a") == IPv4Address("10.245.0.2")


def test_threads_with_their_own_instances_never_share_an_address(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    results: dict[str, IPv4Address] = {}
    lock = threading.Lock()

    def worker(n: int) -> None:
        ipam = Ipam(path, CIDR)
        for i in range(20):
            address = ipam.allocate(f"t{n}/vm{i}")
            with lock:
                results[f"t{n}/vm{i}"] = address

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results.values())) == 80
    assert Ipam(path, CIDR).allocations() == results


ALLOCATE_SCRIPT = """
import sys
from ipaddress import IPv4Network
from pathlib import Path
from kubevisor.network.ipam import Ipam
ipam = Ipam(Path(sys.argv[1]), IPv4Network(sys.argv[2]))
for i in range(int(sys.argv[4])):
    ipam.allocate(f"{sys.argv[3]}/vm{i}")
"""


def test_processes_sharing_the_file_never_share_an_address(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    procs = [
        subprocess.Popen([sys.executable, "-c", ALLOCATE_SCRIPT, str(path), str(CIDR), f"p{n}", "25"])
        for n in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    allocations = Ipam(path, CIDR).allocations()
    assert len(allocations) == 75
    assert len(set(allocations.values())) == 75


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=60))
def test_any_sequence_keeps_one_owner_per_address(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[bool, int]]
) -> None:
    cidr = IPv4Network("10.1.0.0/28")  # 13 allocatable addresses for 10 owners
    ipam = Ipam(tmp_path_factory.mktemp("ipam") / "ipam.json", cidr)
    model: dict[str, IPv4Address] = {}
    for allocate, n in ops:
        owner = f"ns/vm{n}"
        if allocate:
            address = ipam.allocate(owner)
            assert model.setdefault(owner, address) == address
        else:
            assert ipam.release(owner) == model.pop(owner, None)
    held = ipam.allocations()
    assert held == model
    assert len(set(held.values())) == len(held)
    assert all(
        a in cidr and a not in (cidr.network_address, cidr.network_address + 1, cidr.broadcast_address)
        for a in held.values()
    )
