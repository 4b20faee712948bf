"""``kubevisor up``'s pod network flags -> the agent's settings: on by default only where the host can run
it, off with ``--no-pod-network``, and a pod CIDR that is not one is refused naming the flag."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from kubevisor.agent import networking
from kubevisor.agent.running import AgentConfig
from kubevisor.cli import main


def agent_config(*flags: str) -> AgentConfig:
    return main._agent_config(main._parser().parse_args(["up", "--data-dir", "/tmp/kv", *flags]))


@pytest.mark.parametrize("capable", [True, False])
def test_default_follows_what_the_host_can_do(monkeypatch: pytest.MonkeyPatch, capable: bool) -> None:
    monkeypatch.setattr(networking, "host_supports_pod_network", lambda: capable)
    config = agent_config()
    assert config.pod_network is capable
    assert config.pod_cidr == IPv4Network("10.244.0.0/24")
    assert config.network_namespace is None


def test_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(networking, "host_supports_pod_network", lambda: True)
    assert agent_config("--no-pod-network").pod_network is False
    config = agent_config("--pod-network", "--pod-cidr", "10.250.3.0/24", "--network-namespace", "node1")
    assert config.pod_network is True
    assert config.pod_cidr == IPv4Network("10.250.3.0/24")
    assert config.network_namespace == "node1"
    with pytest.raises(ValueError, match=r"--pod-cidr '10.250.3.1/24'"):
        agent_config("--pod-cidr", "10.250.3.1/24")
