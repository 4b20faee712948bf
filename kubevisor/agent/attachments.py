"""VolumeAttachments: a ReadWriteOnce claim every node reaches is opened by one node's QEMU at a time.

Why: storage every node reaches (NFS, a shared directory) does not stop two QEMUs of two nodes from writing
one image (QEMU's image locks are per host; its NFS driver takes none). Asking the API "does a running VMI
elsewhere use it?" is not enough: two nodes starting at the same moment both see nobody. What closes the
race is a record the API server creates at most once: a ``storage.k8s.io/v1`` VolumeAttachment whose name
is derived from the PersistentVolume alone (:func:`attachment_name`), so of two agents creating it one
gets ``409 AlreadyExists``, as Kubernetes' attach/detach controller records CSI attachments.

Which claims (:func:`kubevisor.agent.preparing.needs_attachment`): writable, ReadWriteOnce (not
ReadWriteMany/ReadOnlyMany, and not attached ``readOnly``), and not node-local (an NFS volume, or an image
outside the node's own ``DATA/volumes``). Local volumes have one node, and ReadWriteMany claims may be open
on every node at once, so neither gets a record: a VMI without such claims costs no API call.

The record (created before QEMU opens the claim, at start or hotplug): ``spec.attacher``
``kubevisor.io/agent``, ``spec.nodeName`` this node, ``spec.source.persistentVolumeName`` the volume; then
``status.attached`` true (its own write: the create is the lock, the status a report); the annotations
:data:`HOLDER_ANNOTATION` (``namespace/name``) and :data:`HOLDER_UID_ANNOTATION` (uid) name the VMI.
The run directory's :data:`RECORD` remembers which attachments its VMI holds (volume -> attachment).

An existing record (:func:`decide`):

- held by this VMI (same node and uid): it is this VMI's (a retried start, an adopted guest);
- held by another VMI of this node: refused while that VMI's QEMU runs or starts here, else taken over;
- held by another node: refused (``FailedAttachVolume`` naming the VMI and node), and the VMI waits and
  retries, as a pod waits for a volume. It is taken over only when that Node object no longer exists.
  A NotReady node with an expired Lease is *not* enough: QEMU outlives its agent by design, so a node
  whose agent is dead may still run the guest. Deleting the Node (after making sure the machine is down,
  as for a StatefulSet pod on a lost node) is the administrator's statement that it runs nothing.
  Attachments of another attacher (a CSI driver) are never touched.

Taking over is a delete with preconditions (the record's uid and resourceVersion: nobody changed it since
it was judged) followed by a create, which again only one agent wins.

Release (:meth:`Attacher.release`): when the last QEMU of this node using the claim is gone (the VMI
stopped, finished, deleted or gone; a failed start; a hot-unplug), the agent deletes the records its run
directory lists, each only if it still names this node and this VMI. Level-based: the run directory's
record is read on every reconcile of a VMI whose QEMU is gone, and when the agent starts it deletes the
records of its node whose VMI has no QEMU here (:meth:`Attacher.sweep`), which covers an agent that died
between QEMU's exit and the delete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kubevisor.agent.claims import ClaimedImage
from kubevisor.api.registry import Obj
from kubevisor.api.storage import AGENT_ATTACHER
from kubevisor.client import errors
from kubevisor.client.requesting import Client, ResourceClient

__all__ = [
    "ATTACHER",
    "HOLDER_ANNOTATION",
    "HOLDER_UID_ANNOTATION",
    "RECORD",
    "Attacher",
    "Decision",
    "Refused",
    "attachment_name",
    "decide",
    "forget",
    "recorded",
    "remember",
]

log = logging.getLogger(__name__)

ATTACHER = AGENT_ATTACHER
PREFIX = "kubevisor-"
MAX_NAME = 253
HOLDER_ANNOTATION = "kubevisor.io/vmi"
"""On a VolumeAttachment: ``namespace/name`` of the VMI whose QEMU opens the volume."""
HOLDER_UID_ANNOTATION = "kubevisor.io/vmi-uid"
"""On a VolumeAttachment: that VMI's uid."""
RECORD = "attachments.json"
"""In a VMI's run directory: the VolumeAttachments it holds, volume name -> attachment name."""
ATTEMPTS = 3


class Refused(Exception):
    """Another VMI holds the volume; the message names it and its node."""


def attachment_name(pv: str) -> str:
    """The VolumeAttachment of PersistentVolume ``pv``: ``kubevisor-<pv>``, or ``kubevisor-<sha256 of pv>``
    when that would be longer than a name may be (a function of the volume alone: one per volume)."""
    name = PREFIX + pv
    if len(name) <= MAX_NAME:
        return name
    return PREFIX + hashlib.sha256(pv.encode()).hexdigest()


@dataclass(frozen=True)
class Holder:
    """Who an existing VolumeAttachment names."""

    attacher: str
    node: str
    vmi: str
    uid: str

    @classmethod
    def of(cls, attachment: Obj) -> Holder:
        spec = attachment.get("spec") or {}
        annotations = (attachment.get("metadata") or {}).get("annotations") or {}
        return cls(
            attacher=str(spec.get("attacher") or ""),
            node=str(spec.get("nodeName") or ""),
            vmi=str(annotations.get(HOLDER_ANNOTATION) or ""),
            uid=str(annotations.get(HOLDER_UID_ANNOTATION) or ""),
        )


@dataclass(frozen=True)
class Decision:
    """What to do about an existing VolumeAttachment."""

    action: Literal["mine", "refuse", "take_over"]
    """``mine``: this VMI holds it; ``refuse``: another does; ``take_over``: its holder runs nothing."""
    message: str = ""
    """Why it is refused, or taken over."""


def decide(
    attachment: Obj,
    *,
    node: str,
    uid: str,
    live_here: Callable[[str], bool],
    holder_node_exists: bool,
) -> Decision:
    """Judge the existing VolumeAttachment of a volume the VMI ``uid`` of ``node`` wants.

    ``live_here(uid)``: a QEMU of this node runs (or is being started) for the VMI of that uid;
    ``holder_node_exists``: the Node the attachment names exists (ignored when it is this node)."""
    holder = Holder.of(attachment)
    name = (attachment.get("metadata") or {}).get("name")
    who = f"VMI {holder.vmi or '(unknown)'}"
    if holder.attacher != ATTACHER:
        return Decision(
            "refuse", f"is attached to node {holder.node} by {holder.attacher} (VolumeAttachment {name})"
        )
    if holder.node == node:
        if holder.uid == uid:
            return Decision("mine")
        if holder.uid and live_here(holder.uid):
            return Decision("refuse", f"is attached by {who} on this node (VolumeAttachment {name})")
        return Decision("take_over", f"{who} runs nothing on this node")
    if holder_node_exists:
        return Decision(
            "refuse",
            f"is attached by running {who} on another node ({holder.node}, VolumeAttachment {name})",
        )
    return Decision("take_over", f"node {holder.node} of {who} no longer exists")


# --- the run directory's record ---------------------------------------------------------------------


def recorded(run_dir: Path) -> dict[str, str]:
    """The VolumeAttachments the run directory's VMI holds: volume name -> attachment name."""
    try:
        data = json.loads((run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def _write(run_dir: Path, data: dict[str, str]) -> None:
    path = run_dir / RECORD
    if not data:
        path.unlink(missing_ok=True)
        return
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{RECORD}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remember(run_dir: Path, volume: str, name: str) -> None:
    """Record that the run directory's VMI holds attachment ``name`` for ``volume`` (temp file + rename)."""
    _write(run_dir, recorded(run_dir) | {volume: name})


def forget(run_dir: Path, volume: str) -> None:
    """Drop ``volume`` from the run directory's record."""
    data = recorded(run_dir)
    if data.pop(volume, None) is not None:
        _write(run_dir, data)


# --- the API side ------------------------------------------------------------------------------------


class Attacher:
    """Creates, takes over and deletes this node's VolumeAttachments."""

    def __init__(self, client: Client, node: str) -> None:
        self.node = node
        self.attachments: ResourceClient = client.resource("storage.k8s.io/v1", "volumeattachments")
        self.nodes: ResourceClient = client.resource("v1", "nodes")

    def _body(self, name: str, image: ClaimedImage, vmi: str, uid: str) -> Obj:
        return {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "VolumeAttachment",
            "metadata": {
                "name": name,
                "annotations": {HOLDER_ANNOTATION: vmi, HOLDER_UID_ANNOTATION: uid},
            },
            "spec": {
                "attacher": ATTACHER,
                "nodeName": self.node,
                "source": {"persistentVolumeName": image.volume},
            },
        }

    async def _node_exists(self, node: str) -> bool:
        try:
            await self.nodes.get(node)
        except errors.NotFoundError:
            return False
        return True

    async def acquire(
        self, image: ClaimedImage, *, vmi: str, uid: str, live_here: Callable[[str], bool]
    ) -> str:
        """Make this node's VMI ``vmi`` (``namespace/name``, ``uid``) the holder of ``image``'s volume:
        the attachment's name; :class:`Refused` when another VMI holds it."""
        name = attachment_name(image.volume)
        body = self._body(name, image, vmi, uid)
        for _ in range(ATTEMPTS):
            try:
                created = await self.attachments.create(body)
            except errors.AlreadyExistsError:
                pass
            else:
                log.info("node %s: VolumeAttachment %s created for VMI %s", self.node, name, vmi)
                with contextlib.suppress(errors.NotFoundError, errors.ConflictError):  # it holds anyway
                    await self.attachments.update_status(dict(created, status={"attached": True}))
                return name
            try:
                existing = await self.attachments.get(name)
            except errors.NotFoundError:
                continue  # released meanwhile: create again
            holder = Holder.of(existing)
            exists = holder.node == self.node or await self._node_exists(holder.node)
            decision = decide(
                existing, node=self.node, uid=uid, live_here=live_here, holder_node_exists=exists
            )
            if decision.action == "mine":
                return name
            if decision.action == "refuse":
                raise Refused(decision.message)
            meta = existing["metadata"]
            try:
                await self.attachments.delete(
                    name, preconditions={"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}
                )
            except (errors.NotFoundError, errors.ConflictError):
                continue  # changed meanwhile: judge it again
            log.warning(
                "node %s: took over VolumeAttachment %s for VMI %s: %s",
                self.node,
                name,
                vmi,
                decision.message,
            )
        raise Refused(f"is contended (VolumeAttachment {name} changed {ATTEMPTS} times while it was judged)")

    async def release(self, name: str, uid: str) -> None:
        """Delete attachment ``name`` if it still names this node and the VMI ``uid`` (idempotent)."""
        try:
            existing = await self.attachments.get(name)
        except errors.NotFoundError:
            return
        holder = Holder.of(existing)
        if holder.attacher != ATTACHER or holder.node != self.node or holder.uid != uid:
            return  # taken over: not ours any more
        meta = existing["metadata"]
        with contextlib.suppress(errors.NotFoundError, errors.ConflictError):  # changed: not ours
            await self.attachments.delete(
                name, preconditions={"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}
            )
            log.info("node %s: VolumeAttachment %s of VMI %s released", self.node, name, holder.vmi)

    async def release_recorded(self, run_dir: Path, uid: str) -> None:
        """Release every attachment the run directory lists for VMI ``uid``, then forget them."""
        for volume, name in recorded(run_dir).items():
            await self.release(name, uid)
            forget(run_dir, volume)

    async def sweep(self, live_uids: Collection[str]) -> list[str]:
        """Delete this node's attachments whose VMI runs no QEMU here (``live_uids``: those that do); the
        names deleted. For the agent's start, before any VMI starts."""
        listed = await self.attachments.list(field_selector=f"spec.nodeName={self.node}")
        released = []
        for attachment in listed.items:
            holder = Holder.of(attachment)
            if holder.attacher != ATTACHER or holder.uid in live_uids:
                continue
            name = str(attachment["metadata"]["name"])
            await self.release(name, holder.uid)
            released.append(name)
        return released
