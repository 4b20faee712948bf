"""`kubevisor up --insecure-registry`: the node agent pulls containerDisks from those registries over HTTP."""

from __future__ import annotations

from kubevisor.cli import main


def test_insecure_registries_reach_the_agent() -> None:
    args = main._parser().parse_args(
        ["up", "--data-dir", "/tmp/kv", "--insecure-registry", "reg.lab:5000", "--insecure-registry", "plain"]
    )
    assert main._agent_config(args).insecure_registries == ("reg.lab:5000", "plain")
    default = main._parser().parse_args(["up", "--data-dir", "/tmp/kv"])
    assert main._agent_config(default).insecure_registries == ()
