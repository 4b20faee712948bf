"""Argument parsing of the VMI stream commands (port-forward targets and ports, the parsers)."""

from __future__ import annotations

import pytest

from kubevisor.cli import main, streams


def test_port_forward_targets_and_ports() -> None:
    assert streams.parse_target("vmi/web") == "web"
    assert streams.parse_target("vm/web") == "web"  # a VM's VMI has its name
    for bad in ("web", "pod/web", "vmi/"):
        with pytest.raises(ValueError, match="expected vmi/NAME"):
            streams.parse_target(bad)
    assert streams.parse_ports("8080:80") == (8080, 80)
    assert streams.parse_ports("22") == (22, 22)
    assert streams.parse_ports("0:22") == (0, 22)
    for bad in ("a:b", "80:0", "70000:80", "80:70000"):
        with pytest.raises(ValueError, match="LOCAL:REMOTE"):
            streams.parse_ports(bad)


def test_parsers() -> None:
    parser = main._parser()
    args = parser.parse_args(["pause", "vm", "web", "-n", "team-a"])
    assert (args.command, args.kind, args.name, args.namespace) == ("pause", "vm", "web", "team-a")
    args = parser.parse_args(["vnc", "web", "--screenshot", "s.png"])
    assert str(args.screenshot) == "s.png" and args.port == 0
    args = parser.parse_args(["port-forward", "vmi/web", "8080:80", "2222:22", "--kubeconfig", "k"])
    assert args.ports == ["8080:80", "2222:22"] and args.kubeconfig == "k"
    with pytest.raises(SystemExit):
        parser.parse_args(["pause", "pod", "web"])
