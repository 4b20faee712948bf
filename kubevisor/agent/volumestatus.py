"""``status.volumeStatus`` of a running VMI: one entry per volume, as KubeVirt lists them.

KubeVirt's virt-controller lists every volume of the spec (``name``, and for claim volumes
``persistentVolumeClaimInfo``: ``claimName``, ``accessModes``, ``volumeMode``, ``capacity``, ``requests``,
``filesystemOverhead``), and virt-handler adds each disk's ``target`` (``vda``, ``sda``...) from the domain;
``phase``/``reason``/``message`` are only set for hotplugged volumes. kubevisor's agent writes all of it
(it is the one that knows the disks), plus ``size``: the disk's virtual size as QEMU sees it
(``query-block``), which grows when the claim is expanded (:mod:`kubevisor.agent.expanding`).

Owners: this module for entries without ``hotplugVolume``; :mod:`kubevisor.agent.hotplug` for the
hotplugged ones, which it keeps after these. The entries are part of the VMI's ``Running`` status write
(no write of their own); afterwards a Running VMI with claim volumes is re-checked on each of its
reconciles and written only when something changed (a claim grew).

``filesystemOverhead`` is ``"0"`` for Filesystem claims: kubevisor's ``disk.img`` takes the volume's whole
capacity (CDI reserves 5.5% of a file system for its metadata; a local image file has no such overhead to
keep).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kubevisor.agent import hotplug
from kubevisor.api.registry import Obj
from kubevisor.virt import qemucmd
from kubevisor.virt.qmp import QmpError, Session

__all__ = ["claim_names", "compute", "entries", "merged", "sizes"]

ClaimReader = Callable[[str], Awaitable[Mapping[str, Any] | None]]
"""Reads a claim of the VMI's namespace by name; None if it does not exist."""


def _hotpluggable(volume: Obj) -> bool:
    return bool(
        (volume.get("persistentVolumeClaim") or {}).get("hotpluggable")
        or (volume.get("dataVolume") or {}).get("hotpluggable")
    )


def claim_names(spec: Obj) -> dict[str, str]:
    """Volume name -> claim name, for the (not hotplugged) claim and DataVolume volumes of ``spec``."""
    found: dict[str, str] = {}
    for volume in spec.get("volumes") or []:
        if _hotpluggable(volume):
            continue
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName") or (
            volume.get("dataVolume") or {}
        ).get("name")
        if claim:
            found[str(volume.get("name"))] = str(claim)
    return found


async def sizes(qmp: Session | None) -> dict[str, int]:
    """Disk name -> virtual size in bytes, from QEMU (empty when it cannot be asked)."""
    if qmp is None:
        return {}
    try:
        blocks = await qmp.execute("query-block") or []
    except QmpError:
        return {}
    prefix = qemucmd.device_id("")
    found: dict[str, int] = {}
    for entry in blocks:
        device = str(entry.get("qdev") or "").removeprefix("/machine/peripheral/").split("/")[0]
        image = (entry.get("inserted") or {}).get("image") or {}
        if device.startswith(prefix) and isinstance(image.get("virtual-size"), int):
            found[device.removeprefix(prefix)] = int(image["virtual-size"])
    return found


def _claim_info(claim: str, pvc: Mapping[str, Any] | None) -> Obj:
    info: Obj = {"claimName": claim}
    if pvc is None:
        return info
    spec, status = pvc.get("spec") or {}, pvc.get("status") or {}
    modes = status.get("accessModes") or spec.get("accessModes")
    if modes:
        info["accessModes"] = list(modes)
    mode = spec.get("volumeMode") or "Filesystem"
    info["volumeMode"] = mode
    if status.get("capacity"):
        info["capacity"] = dict(status["capacity"])
    requests = (spec.get("resources") or {}).get("requests")
    if requests:
        info["requests"] = dict(requests)
    if mode == "Filesystem":
        info["filesystemOverhead"] = "0"
    return info


def entries(
    spec: Obj, claims: Mapping[str, Mapping[str, Any] | None], disk_sizes: dict[str, int]
) -> list[Obj]:
    """The entries of the spec's volumes that are not hotplugged, in spec order."""
    targets = hotplug.target_names(spec)
    names = claim_names(spec)
    out: list[Obj] = []
    for volume in spec.get("volumes") or []:
        if _hotpluggable(volume):
            continue
        name = str(volume.get("name"))
        entry: Obj = {"name": name}
        if name in targets:
            entry["target"] = targets[name]
        if name in names:
            entry["persistentVolumeClaimInfo"] = _claim_info(names[name], claims.get(names[name]))
        if name in disk_sizes:
            entry["size"] = disk_sizes[name]
        out.append(entry)
    return out


async def compute(spec: Obj, qmp: Session | None, read_claim: ClaimReader) -> list[Obj]:
    """The entries for ``spec``, reading its claims and asking QEMU for the disks' sizes."""
    claims: dict[str, Mapping[str, Any] | None] = {}
    for claim in sorted(set(claim_names(spec).values())):
        claims[claim] = await read_claim(claim)
    return entries(spec, claims, await sizes(qmp))


def merged(status: Obj, mine: list[Obj]) -> Obj:
    """``status`` with its non-hotplug entries replaced by ``mine`` (hotplugged entries kept, after)."""
    new = copy.deepcopy(status)
    hot = [e for e in status.get("volumeStatus") or [] if "hotplugVolume" in e]
    listed: list[Any] = mine + hot
    if listed:
        new["volumeStatus"] = listed
    else:
        new.pop("volumeStatus", None)
    return new
