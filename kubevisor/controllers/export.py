"""The VirtualMachineExport controller (export.kubevirt.io/v1), KubeVirt's virt-controller export part.

It decides whether an export can be served and writes where; the apiserver serves the downloads
(:mod:`kubevisor.apiserver.exports`) from the node agent holding the data (:mod:`kubevisor.agent.exporting`).
Owner of a VirtualMachineExport's ``status`` and of the generated token Secret.

1. Token: ``spec.tokenSecretRef`` names a Secret whose ``token`` key authenticates downloads; when it is
   unset the controller creates ``export-token-<name>`` (a random token, owned by the export, so it goes
   with it) and names it in ``status.tokenSecretRef``, as KubeVirt does.
2. TTL: ``spec.ttlDuration`` (default 2h) from the export's creation is ``status.ttlExpirationTime``; at
   that time the controller deletes the export (and, through its owner reference, the generated Secret).
3. Source, re-checked on every change of the objects involved:

   - ``PersistentVolumeClaim``: it must exist and be Bound (a DataVolume import must have succeeded), and
     no VMI that is not finished may use it (``persistentVolumeClaim`` or ``dataVolume`` volume): while
     one does, phase ``Pending`` with ``Ready``/``PVCReady`` False, reason ``inUse`` (KubeVirt's).
   - ``VirtualMachine``: it must be stopped (no VMI of its name), each of its claim-backed volumes as
     above; a VM without claim-backed volumes is ``Skipped``.
   - ``VirtualMachineSnapshot``: it must be ``readyToUse``; its content's volume backups are exported,
     read-only, from the snapshot's stored images; none: ``Skipped``.

   Volumes are named by their claim. When all is well: phase ``Ready`` with ``status.links`` (internal and
   external: the API server this controller talks to, with its CA), one URL per volume and format
   (``raw``: ``disk.img``, ``gzip``: ``disk.img.gz``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from datetime import timedelta

from kubevisor.api import export as api
from kubevisor.api.registry import Obj
from kubevisor.client import errors, timestamps
from kubevisor.client.informers import Informer, object_key
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result

__all__ = ["ExportController"]

log = logging.getLogger(__name__)

KV = "kubevirt.io/v1"
SNAP = "snapshot.kubevirt.io/v1beta1"
FINISHED = ("Succeeded", "Failed")
IMPORT_SOURCE = "cdi.kubevirt.io/storage.import.source"
POD_PHASE = "cdi.kubevirt.io/storage.pod.phase"


def _now() -> str:
    return timestamps.format_time(timestamps.now())


def _claims_of(spec: Obj) -> list[str]:
    """Claim names of a VMI (or VM template) spec's claim-backed volumes."""
    out = []
    for volume in spec.get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName") or (
            volume.get("dataVolume") or {}
        ).get("name")
        if claim:
            out.append(str(claim))
    return out


class _NotReady(Exception):
    """The source cannot be exported now: phase Pending with ``reason`` and the message."""

    def __init__(self, reason: str, message: str, *, pvc_reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.pvc_reason = pvc_reason or reason


class ExportController(Controller):
    """Token, TTL, source checks and links of every VirtualMachineExport (see the module docstring)."""

    name = "vmexport"

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        super().__init__(client, concurrency=concurrency)
        self.exports: ResourceClient = client.resource(api.API_VERSION, api.PLURAL)
        self.secrets: ResourceClient = client.resource("v1", "secrets")
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.vms: ResourceClient = client.resource(KV, "virtualmachines")
        self.vmis: ResourceClient = client.resource(KV, "virtualmachineinstances")
        self.snapshots: ResourceClient = client.resource(SNAP, "virtualmachinesnapshots")
        self.contents: ResourceClient = client.resource(SNAP, "virtualmachinesnapshotcontents")
        self._exports: Informer | None = None
        self._pvcs: Informer | None = None
        self._vms: Informer | None = None
        self._vmis: Informer | None = None
        self._snapshots: Informer | None = None
        self._contents: Informer | None = None

    def setup(self) -> None:
        self._exports = self.watch(self.exports)
        self._pvcs = self.watch(self.pvcs, keys=self._keys_for("PersistentVolumeClaim"))
        self._vms = self.watch(self.vms, keys=self._keys_for("VirtualMachine"))
        self._vmis = self.watch(self.vmis, keys=self._vmi_keys)
        self._snapshots = self.watch(self.snapshots, keys=self._keys_for("VirtualMachineSnapshot"))
        self._contents = self.watch(self.contents, keys=self._content_keys)

    # --- event -> keys ------------------------------------------------------------------------------

    def _exports_in(self, namespace: str) -> list[Obj]:
        if self._exports is None:
            return []
        return [e for e in self._exports.list() if e["metadata"].get("namespace") == namespace]

    def _keys_for(self, kind: str) -> Callable[[Obj], list[str]]:
        def keys(obj: Obj) -> list[str]:
            meta = obj["metadata"]
            return [
                object_key(e)
                for e in self._exports_in(str(meta.get("namespace")))
                if ((e.get("spec") or {}).get("source") or {}).get("kind") == kind
                and (e["spec"]["source"]).get("name") == meta.get("name")
            ]

        return keys

    def _vmi_keys(self, vmi: Obj) -> list[str]:
        """A VMI concerns the exports of its VM and of its claims: all exports of the namespace (few)."""
        return [object_key(e) for e in self._exports_in(str(vmi["metadata"].get("namespace")))]

    def _content_keys(self, content: Obj) -> list[str]:
        snapshot = (content.get("spec") or {}).get("virtualMachineSnapshotName")
        namespace = str(content["metadata"].get("namespace"))
        return self._keys_for("VirtualMachineSnapshot")(
            {"metadata": {"namespace": namespace, "name": snapshot}}
        )

    # --- reconcile ----------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        assert self._exports is not None
        export = self._exports.get(key)
        if export is None or export["metadata"].get("deletionTimestamp"):
            return None
        meta, spec = export["metadata"], export.get("spec") or {}
        namespace = str(meta["namespace"])
        try:
            ttl = api.parse_duration(str(spec.get("ttlDuration") or api.DEFAULT_TTL))
        except ValueError:
            ttl = api.parse_duration(
                api.DEFAULT_TTL
            )  # validation refuses bad ones; an old object keeps going
        created = timestamps.parse_time(str(meta.get("creationTimestamp") or _now()))
        expires = created + timedelta(seconds=ttl)
        remaining = expires.timestamp() - time.time()
        if remaining <= 0:
            log.info("VirtualMachineExport %s: its ttlDuration passed; deleting it", key)
            try:
                await self.exports.delete(str(meta["name"]), namespace)
            except errors.NotFoundError:
                pass
            return None
        token_secret = await self._ensure_token(export)
        source = spec.get("source") or {}
        status: Obj = {
            "tokenSecretRef": token_secret,
            "ttlExpirationTime": timestamps.format_time(expires),
        }
        try:
            volumes, vm_name = await self._volumes(namespace, source)
        except _NotReady as e:
            status["phase"] = "Pending"
            status["conditions"] = self._conditions(
                export, ready=("False", e.reason, str(e)), pvc=("False", e.pvc_reason, str(e))
            )
        else:
            if vm_name:
                status["virtualMachineName"] = vm_name
            if not volumes:
                status["phase"] = "Skipped"
                message = f"{source.get('kind')} {namespace}/{source.get('name')} has no volumes to export"
                status["conditions"] = self._conditions(
                    export, ready=("False", "noVolumes", message), pvc=("False", "noVolumes", message)
                )
            else:
                status["phase"] = "Ready"
                status["links"] = self._links(namespace, str(meta["name"]), volumes)
                status["conditions"] = self._conditions(
                    export,
                    ready=("True", "podReady", "the export is served by the API server"),
                    pvc=("True", "pvcBound", "every exported claim is bound and not in use"),
                )
        await self._write(export, status)
        return Result(requeue_after=remaining + 0.1)

    async def _ensure_token(self, export: Obj) -> str:
        meta = export["metadata"]
        ref = (export.get("spec") or {}).get("tokenSecretRef")
        if ref:
            return str(ref)
        name = api.token_secret_name(str(meta["name"]))
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "ownerReferences": [
                    {
                        "apiVersion": api.API_VERSION,
                        "kind": "VirtualMachineExport",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "type": "Opaque",
            "stringData": {api.TOKEN_KEY: secrets.token_urlsafe(32)},
        }
        try:
            await self.secrets.create(body)
            log.info(
                "VirtualMachineExport %s/%s: token Secret %s created", meta["namespace"], meta["name"], name
            )
        except errors.AlreadyExistsError:
            pass
        return name

    def _cached(self, informer: Informer | None, namespace: str, name: str) -> Obj | None:
        assert informer is not None
        return informer.get(f"{namespace}/{name}")

    def _users(self, namespace: str, claim: str) -> list[str]:
        """The VMIs of ``namespace`` that are not finished and use ``claim``."""
        assert self._vmis is not None
        return [
            str(v["metadata"]["name"])
            for v in self._vmis.list()
            if v["metadata"].get("namespace") == namespace
            and (v.get("status") or {}).get("phase") not in FINISHED
            and claim in _claims_of(v.get("spec") or {})
        ]

    def _check_claim(self, namespace: str, claim: str) -> None:
        pvc = self._cached(self._pvcs, namespace, claim)
        what = f"PersistentVolumeClaim {namespace}/{claim}"
        if pvc is None:
            raise _NotReady("pvcNotFound", f"{what} does not exist")
        phase = (pvc.get("status") or {}).get("phase") or "Pending"
        if phase != "Bound":
            raise _NotReady("pvcPending", f"{what} is {phase}, not Bound")
        annotations = pvc["metadata"].get("annotations") or {}
        if annotations.get(IMPORT_SOURCE) and annotations.get(POD_PHASE) != "Succeeded":
            raise _NotReady("pvcPending", f"{what} is being filled by a DataVolume import")
        users = self._users(namespace, claim)
        if users:
            raise _NotReady(
                "inUse", f"{what} is in use by VirtualMachineInstance {', '.join(sorted(users))}; stop it"
            )

    async def _volumes(self, namespace: str, source: Obj) -> tuple[list[str], str | None]:
        """(claim names to export, the VM's name) of ``source``; raises _NotReady."""
        kind, name = source.get("kind"), str(source.get("name"))
        if kind == "PersistentVolumeClaim":
            self._check_claim(namespace, name)
            return [name], None
        if kind == "VirtualMachine":
            vm = self._cached(self._vms, namespace, name)
            if vm is None:
                raise _NotReady("vmNotFound", f"VirtualMachine {namespace}/{name} does not exist")
            vmi = self._cached(self._vmis, namespace, name)
            if vmi is not None and (vmi.get("status") or {}).get("phase") not in FINISHED:
                raise _NotReady(
                    "inUse", f"VirtualMachine {namespace}/{name} is running; stop it to export its volumes"
                )
            claims = _claims_of((((vm.get("spec") or {}).get("template") or {}).get("spec")) or {})
            for claim in claims:
                self._check_claim(namespace, claim)
            return claims, name
        if kind == "VirtualMachineSnapshot":
            snap = self._cached(self._snapshots, namespace, name)
            if snap is None:
                raise _NotReady(
                    "snapshotNotFound", f"VirtualMachineSnapshot {namespace}/{name} does not exist"
                )
            status = snap.get("status") or {}
            content_name = status.get("virtualMachineSnapshotContentName")
            content = self._cached(self._contents, namespace, str(content_name)) if content_name else None
            if not status.get("readyToUse") or content is None:
                raise _NotReady(
                    "snapshotNotReady", f"VirtualMachineSnapshot {namespace}/{name} is not ready to use yet"
                )
            claims = [
                str(((b.get("persistentVolumeClaim") or {}).get("metadata") or {}).get("name"))
                for b in (content.get("spec") or {}).get("volumeBackups") or []
            ]
            vm_name = ((snap.get("spec") or {}).get("source") or {}).get("name")
            return claims, str(vm_name) if vm_name else None
        raise _NotReady("unsupportedSource", f"spec.source.kind {kind!r} cannot be exported")

    def _links(self, namespace: str, name: str, volumes: list[str]) -> Obj:
        config = self.client.config
        server = config.server.rstrip("/")
        cert = config.ca_data.decode() if config.ca_data else ""
        link = {
            "cert": cert,
            "volumes": [
                {
                    "name": volume,
                    "formats": [
                        {"format": fmt, "url": server + api.download_path(namespace, name, volume, fmt)}
                        for fmt in (api.FORMAT_RAW, api.FORMAT_GZIP)
                    ],
                }
                for volume in volumes
            ],
        }
        return {"internal": link, "external": link}

    @staticmethod
    def _conditions(export: Obj, *, ready: tuple[str, str, str], pvc: tuple[str, str, str]) -> list[Obj]:
        previous = {c.get("type"): c for c in (export.get("status") or {}).get("conditions") or []}
        now = _now()
        out = []
        for type_, (status, reason, message) in (("Ready", ready), ("PVCReady", pvc)):
            prior = previous.get(type_) or {}
            same = prior.get("status") == status and prior.get("reason") == reason
            out.append(
                {
                    "type": type_,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": prior.get("lastProbeTime") if same else None,
                    "lastTransitionTime": prior.get("lastTransitionTime")
                    if prior.get("status") == status
                    else now,
                }
            )
        return out

    async def _write(self, export: Obj, status: Obj) -> None:
        old = export.get("status") or {}
        if all(old.get(k) == v for k, v in status.items()) and set(old) <= set(status):
            return
        if status.get("phase") != old.get("phase"):
            log.info(
                "VirtualMachineExport %s/%s: %s",
                export["metadata"]["namespace"],
                export["metadata"]["name"],
                status.get("phase"),
            )
        body = dict(export)
        body["status"] = status
        await self.exports.update_status(body)
