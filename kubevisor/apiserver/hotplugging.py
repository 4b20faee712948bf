"""Disk hotplug: the ``addvolume`` and ``removevolume`` subresources of KubeVirt's
``subresources.kubevirt.io`` API, for VirtualMachineInstances and VirtualMachines.

As virt-api does, the apiserver only records the request in the desired state; the node agent does the
attaching (:mod:`kubevisor.agent.hotplug`) and reports ``status.volumeStatus``:

- VMI ``addvolume``: the VMI must be running; the volume (``hotpluggable: true``) and its disk (bus
  ``scsi`` unless given) are appended to the VMI's spec. ``removevolume`` takes a hotpluggable volume and
  its disk out of the VMI's spec (a volume the VMI started with cannot be removed).
- VM ``addvolume`` (``virtctl addvolume --persist``): the volume and disk go into the VM's template; if
  its VMI runs, into the VMI's spec as well (KubeVirt's VM controller does this second step from
  ``status.volumeRequests``; here the apiserver writes both at once, so the request cannot be lost
  between them). ``removevolume`` likewise.

Errors, each naming the object and the field: a missing VM/VMI (404), a VMI that is not running (409),
a volume name already in use (409), a claim or DataVolume that does not exist (404, ``causes`` naming
``volumeSource.persistentVolumeClaim.claimName`` or ``volumeSource.dataVolume.name``), a volume to remove
that does not exist (404) or is not hotpluggable (422), a malformed body (400).

Paths: ``PUT /apis/subresources.kubevirt.io/{v1,v1alpha3}/namespaces/{ns}/{virtualmachines,
virtualmachineinstances}/{name}/{addvolume,removevolume}``; RBAC: ``update`` on
``virtualmachines/addvolume`` and so on, as KubeVirt's roles grant it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from kubevisor.api.kubevirt import AddVolumeOptions, RemoveVolumeOptions
from kubevisor.api.registry import Kind, Obj
from kubevisor.api.validation import FieldError, dns1123_label
from kubevisor.apiserver import errors
from kubevisor.apiserver.resources import Objects

__all__ = [
    "ACTIONS",
    "BUSES",
    "DEFAULT_BUS",
    "Kinds",
    "add_to_spec",
    "remove_from_spec",
    "resource_list",
    "vm_volume",
    "vmi_volume",
]

ACTIONS = ("addvolume", "removevolume")
DEFAULT_BUS = "scsi"
"""KubeVirt's bus for hotplugged disks."""
BUSES = ("scsi", "virtio")
"""Buses a disk can be hotplugged on (virtio: a virtio-blk-pci device on a free PCIe root port)."""


class Kinds:
    """The kinds a volume request touches."""

    def __init__(self, *, vm: Kind, vmi: Kind, pvc: Kind, dv: Kind | None) -> None:
        self.vm = vm
        self.vmi = vmi
        self.pvc = pvc
        self.dv = dv


def _dry_run(body: Obj) -> bool:
    value = body.get("dryRun")
    return bool(value) and value != []


def parse_add(body: Obj, what: str) -> Obj:
    """The volume and disk an ``AddVolumeOptions`` body asks for (``{"volume": ..., "disk": ...}``)."""
    for field, message in (
        ("name", "AddVolumeOptions requires name to be set"),
        ("disk", "AddVolumeOptions requires disk to not be nil"),
        ("volumeSource", "AddVolumeOptions requires volumeSource to not be nil"),
    ):
        if body.get(field) in (None, ""):
            raise errors.bad_request(f"{what}: {message}", [FieldError(field, message, "FieldValueRequired")])
    label_errors = dns1123_label(str(body["name"]), "name")
    if label_errors:
        raise errors.bad_request(f"{what}: name: {label_errors[0].message}", label_errors)
    if isinstance(body["disk"], dict):  # as virt-api does: the disk is named after the volume
        body = dict(body, disk=dict(body["disk"], name=body["name"]))
    try:
        options = AddVolumeOptions.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise errors.bad_request(
            f"{what}: the body is not a valid AddVolumeOptions: {where}: {first['msg']}"
        ) from None
    name = options.name
    source = options.volume_source
    volume: Obj = {"name": name}
    if (source.persistent_volume_claim is None) == (source.data_volume is None):
        message = "set exactly one of persistentVolumeClaim and dataVolume"
        raise errors.bad_request(f"{what}: volumeSource: {message}", [FieldError("volumeSource", message)])
    if source.persistent_volume_claim is not None:
        pvc = source.persistent_volume_claim
        volume["persistentVolumeClaim"] = {"claimName": pvc.claim_name, "hotpluggable": True}
        if pvc.read_only:
            volume["persistentVolumeClaim"]["readOnly"] = True
    else:
        assert source.data_volume is not None
        volume["dataVolume"] = {"name": source.data_volume.name, "hotpluggable": True}
    disk = dict(body["disk"])
    disk["name"] = name
    for kind in ("lun", "cdrom"):
        if disk.get(kind) is not None:
            message = f"only disk targets can be hotplugged, not {kind}"
            raise errors.bad_request(f"{what}: disk.{kind}: {message}", [FieldError(f"disk.{kind}", message)])
    target = dict(disk.get("disk") or {})
    target.setdefault("bus", DEFAULT_BUS)
    if target["bus"] not in BUSES:
        message = f"bus {target['bus']!r} cannot be hotplugged; use scsi (the default) or virtio"
        raise errors.bad_request(f"{what}: disk.disk.bus: {message}", [FieldError("disk.disk.bus", message)])
    disk["disk"] = target
    return {"volume": volume, "disk": disk}


def _parse_remove(body: Obj, what: str) -> str:
    if not body.get("name"):
        message = "RemoveVolumeOptions requires name to be set"
        raise errors.bad_request(f"{what}: {message}", [FieldError("name", message, "FieldValueRequired")])
    try:
        return RemoveVolumeOptions.model_validate(body).name
    except ValidationError as e:
        raise errors.bad_request(
            f"{what}: the body is not a valid RemoveVolumeOptions: {e.errors()[0]['msg']}"
        ) from None


def _conflict(message: str) -> errors.ApiError:
    return errors.ApiError(409, "Conflict", message)


def add_to_spec(spec: Obj, request: Obj, what: str) -> None:
    """Append the requested volume and disk to a VMI spec (409 if the name is taken)."""
    name = request["volume"]["name"]
    volumes = list(spec.get("volumes") or [])
    disks = list(((spec.get("domain") or {}).get("devices") or {}).get("disks") or [])
    if any(v.get("name") == name for v in volumes) or any(d.get("name") == name for d in disks):
        raise _conflict(
            f"{what}: unable to add volume [{name}] because volume with that name already exists; "
            "pick another --volume-name"
        )
    spec["volumes"] = [*volumes, copy.deepcopy(request["volume"])]
    devices = spec.setdefault("domain", {}).setdefault("devices", {})
    devices["disks"] = [*disks, copy.deepcopy(request["disk"])]


def _hotpluggable(volume: Obj) -> bool:
    return any(
        bool((volume.get(k) or {}).get("hotpluggable")) for k in ("persistentVolumeClaim", "dataVolume")
    )


def remove_from_spec(spec: Obj, name: str, what: str) -> None:
    """Take hotpluggable volume ``name`` and its disk out of a VMI spec (404/422)."""
    volumes = list(spec.get("volumes") or [])
    volume = next((v for v in volumes if v.get("name") == name), None)
    if volume is None:
        raise errors.ApiError(
            404, "NotFound", f"{what}: unable to remove volume [{name}] because it does not exist"
        )
    if not _hotpluggable(volume):
        raise errors.ApiError(
            422,
            "Invalid",
            f"{what}: unable to remove volume [{name}] because it is not hotpluggable (the VM started with "
            "it); remove it from the VirtualMachine's spec and restart it instead",
        )
    spec["volumes"] = [v for v in volumes if v.get("name") != name]
    devices = (spec.get("domain") or {}).get("devices")
    if isinstance(devices, dict):
        devices["disks"] = [d for d in devices.get("disks") or [] if d.get("name") != name]


async def _check_source(objects: Objects, kinds: Kinds, namespace: str, volume: Obj) -> None:
    """404 naming the field when the claim (or DataVolume) does not exist."""
    if "persistentVolumeClaim" in volume:
        claim, field = (
            volume["persistentVolumeClaim"]["claimName"],
            "volumeSource.persistentVolumeClaim.claimName",
        )
        candidates = [kinds.pvc]
        what = "PersistentVolumeClaim"
    else:
        claim, field = volume["dataVolume"]["name"], "volumeSource.dataVolume.name"
        candidates = [k for k in (kinds.dv, kinds.pvc) if k is not None]
        what = "DataVolume"
    for kind in candidates:
        try:
            await objects.get(kind, namespace, claim)
        except errors.ApiError as e:
            if e.code != 404:
                raise
            continue
        return
    message = f"{what} {claim!r} does not exist in namespace {namespace}; create it first"
    raise errors.ApiError(
        404,
        "NotFound",
        f"{field}: {message}",
        details={
            "name": claim,
            "kind": candidates[0].plural,
            "causes": [{"reason": "FieldValueNotFound", "message": message, "field": field}],
        },
    )


def _running(vmi: Obj) -> bool:
    return (vmi.get("status") or {}).get("phase") == "Running" and not vmi["metadata"].get(
        "deletionTimestamp"
    )


async def _vmi_if_running(objects: Objects, kinds: Kinds, namespace: str, name: str) -> Obj | None:
    try:
        vmi = await objects.get(kinds.vmi, namespace, name)
    except errors.ApiError as e:
        if e.code == 404:
            return None
        raise
    return vmi if _running(vmi) else None


async def _update_vmi_spec(
    objects: Objects,
    kinds: Kinds,
    namespace: str,
    name: str,
    change: Callable[[Obj], None],
    *,
    dry_run: bool,
) -> None:
    what = f"VirtualMachineInstance {namespace}/{name}"

    async def compute(current: Obj) -> Obj:
        if not _running(current):
            phase = (current.get("status") or {}).get("phase") or "Pending"
            raise _conflict(
                f"{what} is not running (phase {phase}); start it first, or add the volume to its "
                "VirtualMachine (--persist)"
            )
        new = copy.deepcopy(current)
        new["metadata"].pop("resourceVersion", None)
        change(new.setdefault("spec", {}))
        return new

    await objects.update(kinds.vmi, namespace, name, compute, dry_run=dry_run)


async def vmi_volume(
    objects: Objects, kinds: Kinds, *, namespace: str, name: str, action: str, body: Obj
) -> None:
    """``addvolume``/``removevolume`` of the VMI ``namespace/name``."""
    what = f"VirtualMachineInstance {namespace}/{name}"
    dry_run = _dry_run(body)
    await objects.get(kinds.vmi, namespace, name)  # 404 names the VMI
    if action == "addvolume":
        request = parse_add(body, what)
        await _check_source(objects, kinds, namespace, request["volume"])
        await _update_vmi_spec(
            objects, kinds, namespace, name, lambda spec: add_to_spec(spec, request, what), dry_run=dry_run
        )
        return
    volume = _parse_remove(body, what)
    await _update_vmi_spec(
        objects, kinds, namespace, name, lambda spec: remove_from_spec(spec, volume, what), dry_run=dry_run
    )


async def vm_volume(
    objects: Objects, kinds: Kinds, *, namespace: str, name: str, action: str, body: Obj
) -> None:
    """``addvolume``/``removevolume`` of the VM ``namespace/name``: its template, and its running VMI."""
    what = f"VirtualMachine {namespace}/{name}"
    vmi_what = f"VirtualMachineInstance {namespace}/{name}"
    dry_run = _dry_run(body)
    await objects.get(kinds.vm, namespace, name)  # 404 names the VM
    request: Obj | None = None
    if action == "addvolume":
        request = parse_add(body, what)
        await _check_source(objects, kinds, namespace, request["volume"])
        volume = str(request["volume"]["name"])
    else:
        volume = _parse_remove(body, what)

    def change(spec: Obj, what: str) -> None:
        if request is not None:
            add_to_spec(spec, request, what)
        else:
            remove_from_spec(spec, volume, what)

    async def compute(current: Obj) -> Obj:
        new = copy.deepcopy(current)
        new["metadata"].pop("resourceVersion", None)
        template = new.setdefault("spec", {}).setdefault("template", {})
        change(template.setdefault("spec", {}), what)
        return new

    def change_vmi(spec: Obj) -> None:
        present = any(v.get("name") == volume for v in spec.get("volumes") or [])
        if present == (request is None):  # added without --persist before, or already gone: as asked
            change(spec, vmi_what)

    await objects.update(kinds.vm, namespace, name, compute, dry_run=dry_run)
    if await _vmi_if_running(objects, kinds, namespace, name) is None:
        return
    try:
        await _update_vmi_spec(objects, kinds, namespace, name, change_vmi, dry_run=dry_run)
    except errors.ApiError as e:
        if e.code not in (404, 409):  # the VMI stopped meanwhile: the VM's spec is what counts
            raise


def resource_list(body: bytes) -> bytes:
    """Add the volume subresources to virt-api's APIResourceList ``body``."""
    data: dict[str, Any] = orjson.loads(body)
    for plural, kind in (
        ("virtualmachineinstances", "VirtualMachineInstance"),
        ("virtualmachines", "VirtualMachine"),
    ):
        for sub in ACTIONS:
            data["resources"].append(
                {
                    "name": f"{plural}/{sub}",
                    "singularName": "",
                    "namespaced": True,
                    "kind": kind,
                    "verbs": ["update"],
                }
            )
    return orjson.dumps(data)
