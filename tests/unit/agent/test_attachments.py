"""VolumeAttachments of the node agent: names, which claims need one, how an existing one is judged, the run
directory's record, and the kind's validation. (Against the real API server with two nodes racing:
tests/integration/agent/test_attachments.py; two VMs end to end: tests/e2e/test_shared_storage.py.)"""

from __future__ import annotations

from pathlib import Path

from kubevisor.agent import attachments, claims, preparing
from kubevisor.api import storage
from kubevisor.api.registry import Obj


def image(
    path: Path, modes: tuple[str, ...] = ("ReadWriteOnce",), nfs: str | None = None, readonly: bool = False
) -> claims.ClaimedImage:
    return claims.ClaimedImage(
        claim="data",
        volume="pv-data",
        path=path,
        format="raw",
        readonly=readonly,
        access_modes=modes,
        nfs_server=nfs,
    )


def existing(node: str, uid: str, attacher: str = attachments.ATTACHER) -> Obj:
    return {
        "metadata": {
            "name": "kubevisor-pv-data",
            "uid": "a1",
            "resourceVersion": "7",
            "annotations": {
                attachments.HOLDER_ANNOTATION: "default/holder",
                attachments.HOLDER_UID_ANNOTATION: uid,
            },
        },
        "spec": {"attacher": attacher, "nodeName": node, "source": {"persistentVolumeName": "pv-data"}},
        "status": {"attached": True},
    }


def test_name_is_a_function_of_the_volume_alone_and_always_a_valid_name() -> None:
    assert attachments.attachment_name("pvc-1234") == "kubevisor-pvc-1234"
    long = "a" * 250
    name = attachments.attachment_name(long)
    assert name == attachments.attachment_name(long) and len(name) <= 253
    assert name.startswith("kubevisor-") and name != attachments.attachment_name("a" * 251)


def test_only_writable_read_write_once_claims_every_node_reaches_need_one(tmp_path: Path) -> None:
    local, shared = tmp_path / "volumes", tmp_path / "shared"
    node = preparing.NodeStorage("n1", volume_dirs=(local, shared))
    assert not preparing.needs_attachment(image(local / "pv" / "disk.img"), node)  # one node has it
    assert preparing.needs_attachment(image(shared / "pv" / "disk.img"), node)
    assert preparing.needs_attachment(image(Path("/export/pv/disk.img"), nfs="10.0.0.1"), node)
    assert not preparing.needs_attachment(image(shared / "pv", modes=("ReadWriteMany",)), node)
    assert not preparing.needs_attachment(image(shared / "pv", modes=("ReadOnlyMany",), readonly=True), node)


def test_an_existing_attachment_is_judged_by_its_holder() -> None:
    def decide(att: Obj, live: bool = False, node_exists: bool = True) -> attachments.Decision:
        return attachments.decide(
            att, node="n1", uid="me", live_here=lambda uid: live, holder_node_exists=node_exists
        )

    assert decide(existing("n1", "me")).action == "mine"  # a retried start, an adopted guest
    same_node = decide(existing("n1", "other"), live=True)
    assert same_node.action == "refuse"
    assert "attached by VMI default/holder on this node" in same_node.message
    assert decide(existing("n1", "other"), live=False).action == "take_over"  # no QEMU here runs it
    elsewhere = decide(existing("n2", "other"))
    assert elsewhere.action == "refuse"
    assert "attached by running VMI default/holder on another node (n2, " in elsewhere.message
    # a dead agent's QEMU may still run: only a deleted Node gives its attachments up
    assert decide(existing("n2", "other"), node_exists=False).action == "take_over"
    foreign = decide(existing("n2", "x", attacher="csi.example.com"), node_exists=False)
    assert foreign.action == "refuse" and "csi.example.com" in foreign.message


def test_the_run_directory_records_what_its_vmi_holds(tmp_path: Path) -> None:
    assert attachments.recorded(tmp_path) == {}
    attachments.remember(tmp_path, "disk", "kubevisor-pv-a")
    attachments.remember(tmp_path, "hot", "kubevisor-pv-b")
    assert attachments.recorded(tmp_path) == {"disk": "kubevisor-pv-a", "hot": "kubevisor-pv-b"}
    attachments.forget(tmp_path, "hot")
    assert attachments.recorded(tmp_path) == {"disk": "kubevisor-pv-a"}
    attachments.forget(tmp_path, "disk")
    assert not (tmp_path / attachments.RECORD).exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left
    (tmp_path / attachments.RECORD).write_text("not json")
    assert attachments.recorded(tmp_path) == {}


def test_volume_attachment_validation() -> None:
    validate = next(k for k in storage.KINDS if k.kind == "VolumeAttachment").validator
    assert validate is not None
    good = existing("n1", "me")
    assert validate(good, None) == []
    bad: Obj = {"metadata": {"name": "x"}, "spec": {"source": {}}}
    fields = {e.field for e in validate(bad, None)}
    assert fields == {"spec.attacher", "spec.nodeName", "spec.source"}
    moved = existing("n2", "me")
    assert [e.field for e in validate(moved, good)] == ["spec"]  # immutable
    status_only = dict(good, status={"attached": False})
    assert validate(status_only, good) == []
