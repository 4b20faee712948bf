"""VolumeAttachments against the real API server: two nodes' agents asking for one ReadWriteOnce volume at
the same moment get it once; the holder's release lets the other in; a holder whose Node is deleted is
taken over; an agent's start-up sweep releases what its node holds for VMIs it runs nothing of; kubectl's
columns. (Two VMs end to end: tests/e2e/test_shared_storage.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from kubevisor.agent import attachments, claims
from kubevisor.agent.running import AgentConfig, start_agent
from kubevisor.client import Client, errors
from kubevisor.platform import Platform

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def image(pv: str) -> claims.ClaimedImage:
    return claims.ClaimedImage(
        claim="data",
        volume=pv,
        path=Path("/export") / pv / "disk.img",
        format="raw",
        readonly=False,
        access_modes=("ReadWriteOnce",),
        nfs_server="127.0.0.1",
    )


def nobody(uid: str) -> bool:
    return False


async def test_two_nodes_racing_for_one_volume_get_it_once(client: Client, http: httpx.AsyncClient) -> None:
    nodes = client.resource("v1", "nodes")
    for node in ("n1", "n2"):
        await nodes.create({"metadata": {"name": node}})
    one, two = attachments.Attacher(client, "n1"), attachments.Attacher(client, "n2")
    results = await asyncio.gather(
        one.acquire(image("pv-a"), vmi="default/a", uid="ua", live_here=nobody),
        two.acquire(image("pv-a"), vmi="default/b", uid="ub", live_here=nobody),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, str)]
    lost = [r for r in results if isinstance(r, attachments.Refused)]
    assert won == ["kubevisor-pv-a"] and len(lost) == 1, results
    winner, loser = (one, two) if results[0] == won[0] else (two, one)
    winner_uid, loser_uid = ("ua", "ub") if winner is one else ("ub", "ua")
    assert f"on another node ({winner.node}, VolumeAttachment kubevisor-pv-a)" in str(lost[0])

    held = await client.resource("storage.k8s.io/v1", "volumeattachments").get("kubevisor-pv-a")
    assert held["spec"] == {
        "attacher": "kubevisor.io/agent",
        "nodeName": winner.node,
        "source": {"persistentVolumeName": "pv-a"},
    }
    assert held["status"]["attached"] is True
    assert held["metadata"]["annotations"][attachments.HOLDER_UID_ANNOTATION] == winner_uid
    table = (await http.get("/apis/storage.k8s.io/v1/volumeattachments", headers={"accept": TABLE})).json()
    assert [c["name"] for c in table["columnDefinitions"]][:6] == [
        "Name",
        "Attacher",
        "PV",
        "Node",
        "Attached",
        "Age",
    ]
    assert table["rows"][0]["cells"][:5] == [
        "kubevisor-pv-a",
        "kubevisor.io/agent",
        "pv-a",
        winner.node,
        "true",
    ]

    # asking again is idempotent for the holder and still refused for the other
    assert await winner.acquire(image("pv-a"), vmi="x", uid=winner_uid, live_here=nobody)
    with pytest.raises(attachments.Refused):
        await loser.acquire(image("pv-a"), vmi="x", uid=loser_uid, live_here=nobody)
    await loser.release("kubevisor-pv-a", loser_uid)  # not its own: untouched
    await winner.release("kubevisor-pv-a", "someone-else")
    assert await client.resource("storage.k8s.io/v1", "volumeattachments").get("kubevisor-pv-a")
    await winner.release("kubevisor-pv-a", winner_uid)
    assert await loser.acquire(image("pv-a"), vmi="x", uid=loser_uid, live_here=nobody)

    # a holder whose Node was deleted is taken over; one whose Node exists never is
    await nodes.delete(loser.node)
    assert await winner.acquire(image("pv-a"), vmi="x", uid=winner_uid, live_here=nobody)
    held = await client.resource("storage.k8s.io/v1", "volumeattachments").get("kubevisor-pv-a")
    assert held["spec"]["nodeName"] == winner.node


async def test_the_start_up_sweep_releases_what_no_qemu_of_the_node_uses(client: Client) -> None:
    await client.resource("v1", "nodes").create({"metadata": {"name": "n1"}})
    one, two = attachments.Attacher(client, "n1"), attachments.Attacher(client, "n2")
    await one.acquire(image("pv-live"), vmi="default/live", uid="live", live_here=nobody)
    await one.acquire(image("pv-gone"), vmi="default/gone", uid="gone", live_here=nobody)
    await two.acquire(image("pv-other"), vmi="default/other", uid="other", live_here=nobody)
    assert await one.sweep({"live"}) == ["kubevisor-pv-gone"]
    resource = client.resource("storage.k8s.io/v1", "volumeattachments")
    names = sorted(a["metadata"]["name"] for a in (await resource.list()).items)
    assert names == ["kubevisor-pv-live", "kubevisor-pv-other"]  # another node's is not this sweep's
    with pytest.raises(errors.InvalidError):  # the spec cannot change
        held = await resource.get("kubevisor-pv-live")
        held["spec"]["nodeName"] = "n2"
        await resource.update(held)


async def test_an_agent_starting_releases_its_nodes_attachments_of_vmis_it_runs_nothing_of(
    plat: Platform, client: Client, tmp_path: Path
) -> None:
    resource = client.resource("storage.k8s.io/v1", "volumeattachments")
    left = attachments.Attacher(client, "restarted")  # what an agent that died after QEMU's exit left
    await left.acquire(image("pv-left"), vmi="default/dead", uid="dead", live_here=nobody)
    agent = await start_agent(
        plat.kubeconfig,
        plat.registry,
        AgentConfig(data_dir=tmp_path / "node", node_name="restarted", accel="tcg"),
    )
    try:
        assert (await resource.list()).items == []  # swept before the agent's workers run
    finally:
        await agent.stop()
