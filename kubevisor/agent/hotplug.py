"""Disk hotplug on the node: a Running VMI's hotpluggable volumes follow its spec (KubeVirt's
virt-handler hotplug, with QMP in place of libvirt).

Desired: the volumes of the VMI's spec marked ``hotpluggable`` (the apiserver's ``addvolume`` puts them
there, :mod:`kubevisor.apiserver.hotplugging`), each with its disk. Actual: the disks QEMU has
(``query-block``). Level-based, on every reconcile of a Running VMI:

- a hotpluggable volume without a device: resolve its claim to the image (:mod:`kubevisor.agent.claims`;
  ReadWriteOnce: not while another VMI of the node has it, and for storage every node reaches only as the
  holder of its VolumeAttachment, :mod:`kubevisor.agent.attachments`), attach it
  (:mod:`kubevisor.virt.hotplug`);
- a disk device whose name is in no disk of the spec any more: detach it, and release its
  VolumeAttachment once QEMU has let go of it;
- ``status.volumeStatus`` lists the hotplugged volumes: ``Ready`` (reason ``VolumeReady``) with the
  guest's device name as ``target``, ``Pending`` with why, or ``Detaching``; it is written only when it
  changes, so a VMI without hotplug costs no API write (one ``query-block`` per reconcile).

Not yet: bus virtio on the i440fx machine is untested; ``target`` is the name the guest's kernel gives
when disks appear in spec order (a guest that names disks otherwise may differ).
"""

from __future__ import annotations

import copy
import logging
import string
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Literal

from kubevisor.agent import claims, preparing
from kubevisor.api.registry import Obj
from kubevisor.client.events import EventRecorder
from kubevisor.controllers.reconciling import TemporaryError
from kubevisor.virt import hotplug, qemucmd
from kubevisor.virt.process import Reverter
from kubevisor.virt.qmp import QmpError, Session

__all__ = ["RETRY", "Plan", "Wanted", "plan", "sync", "target_names", "wanted"]

log = logging.getLogger(__name__)

RETRY = 5.0
"""Seconds before a volume that could not be attached (or detached) is tried again."""


@dataclass(frozen=True)
class Wanted:
    """A hotpluggable volume of the VMI's spec, with its disk."""

    name: str
    """Volume (and disk) name."""
    claim: str
    """The claim (or DataVolume, whose claim has its name)."""
    field: str
    """Where the claim is named, for messages."""
    bus: Literal["scsi", "virtio"] = "scsi"
    """The disk's bus."""
    readonly: bool = False
    """The volume asks for read-only."""
    serial: str | None = None
    """The disk's serial."""


@dataclass(frozen=True)
class Plan:
    """What to change in QEMU."""

    attach: tuple[Wanted, ...]
    """Volumes to attach."""
    detach: tuple[tuple[str, str], ...]
    """(device id, format node) of disks to detach."""


def _disks(spec: Obj) -> list[Obj]:
    return list(((spec.get("domain") or {}).get("devices") or {}).get("disks") or [])


def wanted(spec: Obj) -> dict[str, Wanted]:
    """The hotpluggable volumes of a VMI spec, by name (those without a disk are left out)."""
    disks = {d.get("name"): d for d in _disks(spec)}
    found: dict[str, Wanted] = {}
    for index, volume in enumerate(spec.get("volumes") or []):
        name = str(volume.get("name") or "")
        disk = disks.get(name)
        pvc, dv = volume.get("persistentVolumeClaim") or {}, volume.get("dataVolume") or {}
        if disk is None or not (pvc.get("hotpluggable") or dv.get("hotpluggable")):
            continue
        if pvc:
            claim, field = str(pvc.get("claimName") or ""), f"spec.volumes[{index}].persistentVolumeClaim"
        else:
            claim, field = str(dv.get("name") or ""), f"spec.volumes[{index}].dataVolume"
        bus = (disk.get("disk") or {}).get("bus") or "scsi"
        found[name] = Wanted(
            name=name,
            claim=claim,
            field=field,
            bus="virtio" if bus == "virtio" else "scsi",
            readonly=bool(pvc.get("readOnly")) or bool((disk.get("disk") or {}).get("readonly")),
            serial=disk.get("serial"),
        )
    return found


def plan(spec: Obj, present: dict[str, str]) -> Plan:
    """Compare a VMI spec with QEMU's disks (device id -> format node, from ``query-block``)."""
    names = {str(d.get("name")) for d in _disks(spec)}
    attach = tuple(w for w in wanted(spec).values() if qemucmd.device_id(w.name) not in present)
    prefix = qemucmd.device_id("")
    detach = tuple(
        (device, node)
        for device, node in sorted(present.items())
        if device.startswith(prefix) and device.removeprefix(prefix) not in names
    )
    return Plan(attach=attach, detach=detach)


def _letters(index: int) -> str:
    """a, b, ..., z, aa, ab, ...: Linux's disk name suffixes."""
    letters = string.ascii_lowercase
    out = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        out = letters[rest] + out
    return out


def target_names(spec: Obj) -> dict[str, str]:
    """The name the guest's kernel gives each disk of the spec when they appear in order: ``sdX`` for
    scsi and sata, ``vdX`` for virtio."""
    counts = {"sd": 0, "vd": 0}
    names: dict[str, str] = {}
    for disk in _disks(spec):
        target = disk.get("disk") or disk.get("lun") or disk.get("cdrom") or {}
        bus = target.get("bus") or ("scsi" if "lun" in disk else "virtio")
        if disk.get("cdrom") is not None:
            continue
        prefix = "vd" if bus == "virtio" else "sd"
        names[str(disk.get("name"))] = prefix + _letters(counts[prefix])
        counts[prefix] += 1
    return names


def _entry(name: str, phase: str, reason: str, message: str, target: str | None = None) -> Obj:
    entry: Obj = {"name": name}
    if target:
        entry["target"] = target
    entry |= {"phase": phase, "reason": reason, "message": message, "hotplugVolume": {}}
    return entry


async def sync(
    vmi: Obj,
    qmp: Session,
    *,
    storage: preparing.NodeStorage,
    sources: preparing.Sources,
    recorder: EventRecorder,
    write_status: Callable[[Obj], Awaitable[None]],
    held: Collection[str] = (),
) -> None:
    """Make QEMU's hotplugged disks follow ``vmi``'s spec and report them; raises
    :class:`TemporaryError` when something has to be tried again. ``held``: the volumes whose
    VolumeAttachment the VMI holds; those neither in the spec nor open in QEMU any more are released."""
    spec = vmi.get("spec") or {}
    meta = vmi["metadata"]
    old_status = vmi.get("status") or {}
    old = list(old_status.get("volumeStatus") or [])
    machine = str((old_status.get("machine") or {}).get("type") or "q35")
    try:
        present = await hotplug.attached(qmp)
    except QmpError as e:
        raise TemporaryError(f"VMI {meta['namespace']}/{meta['name']}: {e}", delay=RETRY) from e
    todo = plan(spec, present)
    entries: dict[str, Obj] = {}
    retry: list[str] = []
    still_open = {device.removeprefix(qemucmd.device_id("")) for device in present}
    for device, node in todo.detach:
        name = device.removeprefix(qemucmd.device_id(""))
        try:
            gone = await hotplug.detach(qmp, device, node)
        except QmpError as e:
            gone = False
            await recorder.warning(vmi, "FailedDetachVolume", f"volume {name}: {e}")
        if gone:
            still_open.discard(name)
            await recorder.normal(vmi, "VolumeDetached", f"Successfully detached hotplugged volume {name}")
        else:
            entries[name] = _entry(
                name, "Detaching", "VolumeDetaching", f"waiting for the guest to release {name}"
            )
            retry.append(name)
    for want in todo.attach:
        message = await _attach(vmi, qmp, want, machine=machine, storage=storage, sources=sources)
        if message is not None:
            reason, text = message
            entries[want.name] = _entry(want.name, "Pending", reason, text)
            retry.append(want.name)
            await recorder.warning(vmi, reason, text)
        else:
            await recorder.normal(vmi, "VolumeReady", f"Successfully attached hotplugged volume {want.name}")
    in_spec = {str(v.get("name")) for v in spec.get("volumes") or []}
    for name in sorted(set(held) - in_spec - still_open):  # level-based: retried until released
        await sources.detach_claim(name)
    targets = target_names(spec)
    for name in wanted(spec):
        entries.setdefault(
            name,
            _entry(
                name,
                "Ready",
                "VolumeReady",
                f"Successfully attach hotplugged volume {name} to VM",
                targets.get(name),
            ),
        )
    ordered = [entries[n] for n in [*wanted(spec), *sorted(set(entries) - set(wanted(spec)))]]
    kept = [s for s in old if "hotplugVolume" not in s]  # entries other owners may add
    new = kept + ordered
    if new != old:
        status = copy.deepcopy(old_status)
        if new:
            status["volumeStatus"] = new
        else:
            status.pop("volumeStatus", None)
        await write_status(status)
    if retry:
        raise TemporaryError(
            f"VMI {meta['namespace']}/{meta['name']}: volumes {', '.join(retry)} not settled yet", delay=RETRY
        )


async def _attach(
    vmi: Obj,
    qmp: Session,
    want: Wanted,
    *,
    machine: str,
    storage: preparing.NodeStorage,
    sources: preparing.Sources,
) -> tuple[str, str] | None:
    """Attach one volume; None, or (reason, message) saying why it is not attached."""
    namespace = str(vmi["metadata"]["namespace"])
    async with Reverter() as revert:
        try:
            image = await claims.resolve(
                want.claim,
                want.field,
                namespace=namespace,
                node=storage.node,
                volume_dirs=storage.volume_dirs,
                read=sources.read,
                revert=revert,
            )
        except claims.ClaimNotReady as e:
            return e.reason, str(e)
        except claims.ClaimError as e:
            return "FailedAttachVolume", str(e)
        if not (image.shared or image.readonly):
            users = sources.claim_users(image.claim)
            if users:
                modes = ", ".join(image.access_modes) or "ReadWriteOnce"
                return (
                    "FailedAttachVolume",
                    f"{want.field}: PersistentVolumeClaim {image.claim!r} ({modes}) is attached by VMI "
                    f"{', '.join(users)} on this node; it is attached here once that VMI stops (use a "
                    "ReadWriteMany claim to share it)",
                )
        if not want.readonly and preparing.needs_attachment(image, storage):
            why = await sources.attach_claim(image, want.name)
            if why is not None:
                return "FailedAttachVolume", preparing.refused_message(image, want.field, why)
            revert.add(lambda: sources.detach_claim(want.name))
        disk = hotplug.HotplugDisk(
            name=want.name,
            path=image.path,
            bus=want.bus,
            format=image.format,
            readonly=want.readonly or image.readonly,
            serial=want.serial,
            nfs_server=image.nfs_server,
            shareable=image.shared and not image.readonly,
        )
        try:
            await hotplug.attach(qmp, disk, machine=machine)
        except QmpError as e:
            return "FailedAttachVolume", f"volume {want.name}: {e}"
        revert.success()
    log.info("VMI %s/%s: hotplugged volume %s (%s)", namespace, vmi["metadata"]["name"], want.name, disk.bus)
    return None
