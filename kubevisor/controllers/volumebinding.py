"""Binding PersistentVolumeClaims to PersistentVolumes (the part of Kubernetes' PV controller a node's
file-backed volumes need).

Owner of PVC ``spec.volumeName`` (when the user left it empty), PVC ``status`` (phase, accessModes,
capacity), PV ``spec.claimRef`` (when the user left it empty) and PV ``status.phase``.

Rules (Kubernetes' static binding, simplified):

- A Pending claim binds to the volume it names (``spec.volumeName``), else to the smallest Available
  volume that fits: the same ``storageClassName`` (empty matches empty), every access mode the claim asks
  for, the same ``volumeMode``, at least the requested ``storage``, the claim's label ``selector``, and a
  ``claimRef`` that is empty or already names this claim (pre-binding).
- Binding writes the volume first (``claimRef``, then phase Bound), then the claim (``volumeName``, then
  phase Bound): a crash in between leaves a volume reserved for this claim, which the next pass finishes.
- A volume whose claim is gone becomes Released (its data stays: the Retain policy; dynamic provisioning
  and Delete come with storage classes).

Keys: a claim's ``namespace/name``, a volume's ``name`` (no slash).
"""

from __future__ import annotations

import copy
import logging

from kubevisor.api.kubevirt_admission import parse_quantity, selector_matches
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer, object_key, split_key
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result

__all__ = ["VolumeBindingController", "fits"]

log = logging.getLogger(__name__)


def _spec(obj: Obj) -> Obj:
    spec: Obj = obj.get("spec") or {}
    return spec


def _phase(obj: Obj) -> str:
    return str((obj.get("status") or {}).get("phase") or "")


def _names_claim(pv: Obj, pvc: Obj) -> bool:
    ref = _spec(pv).get("claimRef") or {}
    meta = pvc["metadata"]
    return (
        ref.get("name") == meta.get("name")
        and ref.get("namespace") == meta.get("namespace")
        and ref.get("uid") in (None, "", meta.get("uid"))
    )


def fits(pv: Obj, pvc: Obj) -> bool:
    """Whether volume ``pv`` may be bound to claim ``pvc`` (ignoring ``claimRef`` and phase)."""
    want, have = _spec(pvc), _spec(pv)
    if (want.get("storageClassName") or "") != (have.get("storageClassName") or ""):
        return False
    if (want.get("volumeMode") or "Filesystem") != (have.get("volumeMode") or "Filesystem"):
        return False
    if not set(want.get("accessModes") or []) <= set(have.get("accessModes") or []):
        return False
    requested = parse_quantity(((want.get("resources") or {}).get("requests") or {}).get("storage") or 0)
    capacity = parse_quantity((have.get("capacity") or {}).get("storage") or 0)
    if (requested or 0) > (capacity or 0):
        return False
    selector = want.get("selector")
    labels = (pv.get("metadata") or {}).get("labels") or {}
    return not selector or selector_matches(selector, labels)


class VolumeBindingController(Controller):
    """Binds claims to volumes; keeps volume phases (Available, Bound, Released) current."""

    name = "persistentvolume-binder"
    concurrency = 1
    """One worker: two claims must never be bound to one volume by two workers at once."""

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        super().__init__(client, concurrency=concurrency)
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self.recorder = EventRecorder(client, "persistentvolume-controller")
        self._claims: Informer | None = None
        self._volumes: Informer | None = None

    def setup(self) -> None:
        self._claims = self.watch(self.pvcs)
        self._volumes = self.watch(self.pvs, keys=self._volume_keys)

    def _volume_keys(self, pv: Obj) -> list[str]:
        keys = [object_key(pv)]
        ref = _spec(pv).get("claimRef") or {}
        if ref.get("name") and ref.get("namespace"):
            keys.append(f"{ref['namespace']}/{ref['name']}")
        elif self._claims is not None:  # a free volume: every waiting claim may want it
            keys += [object_key(c) for c in self._claims.list() if _phase(c) in ("", "Pending")]
        return keys

    async def reconcile(self, key: str) -> Result | None:
        if "/" in key:
            await self._claim(key)
        else:
            await self._volume(key)
        return None

    # --- volumes -----------------------------------------------------------------------------------

    async def _volume(self, name: str) -> None:
        assert self._volumes is not None and self._claims is not None
        pv = self._volumes.get(name)
        if pv is None or (pv.get("metadata") or {}).get("deletionTimestamp"):
            return
        ref = _spec(pv).get("claimRef") or {}
        if not ref.get("name"):
            await self._volume_phase(pv, "Available")
            return
        claim = self._claims.get(f"{ref.get('namespace')}/{ref['name']}")
        if claim is None or not _names_claim(pv, claim):
            if _phase(pv) == "Bound":
                await self._volume_phase(pv, "Released")
            elif _phase(pv) in ("", "Pending"):
                await self._volume_phase(pv, "Available")  # pre-bound to a claim that is not there yet
            return
        if _spec(claim).get("volumeName") == name:
            await self._volume_phase(pv, "Bound")

    async def _volume_phase(self, pv: Obj, phase: str) -> Obj:
        if _phase(pv) == phase:
            return pv
        status = dict(pv.get("status") or {}, phase=phase)
        updated: Obj = await self.pvs.update_status(dict(pv, status=status))
        return updated

    # --- claims ------------------------------------------------------------------------------------

    async def _claim(self, key: str) -> None:
        assert self._volumes is not None and self._claims is not None
        pvc = self._claims.get(key)
        if pvc is None:  # its volume, if any, is Released
            namespace, name = split_key(key)
            for pv in self._volumes.list():
                ref = _spec(pv).get("claimRef") or {}
                if ref.get("namespace") == namespace and ref.get("name") == name:
                    self.queue.add(object_key(pv))
            return
        if pvc["metadata"].get("deletionTimestamp"):
            return
        wanted = _spec(pvc).get("volumeName")
        if wanted:
            named = self._volumes.get(str(wanted))
            if named is None:
                await self._claim_pending(pvc)
                return
            pv = named
            ref = _spec(pv).get("claimRef") or {}
            if ref.get("name") and not _names_claim(pv, pvc):
                await self._claim_pending(pvc)
                await self.recorder.warning(
                    pvc, "FailedBinding", f"volume {wanted!r} is already bound to another claim"
                )
                return
        else:
            candidates = [
                pv
                for pv in self._volumes.list()
                if not (pv.get("metadata") or {}).get("deletionTimestamp")
                and _phase(pv) not in ("Released", "Failed")
                and (not (_spec(pv).get("claimRef") or {}).get("name") or _names_claim(pv, pvc))
                and fits(pv, pvc)
            ]
            if not candidates:
                await self._claim_pending(pvc)
                return
            pv = min(
                candidates, key=lambda v: parse_quantity((_spec(v).get("capacity") or {}).get("storage")) or 0
            )
        await self._bind(pvc, pv)

    async def _claim_pending(self, pvc: Obj) -> None:
        if _phase(pvc) != "Pending":
            await self.pvcs.update_status(dict(pvc, status=dict(pvc.get("status") or {}, phase="Pending")))

    async def _bind(self, pvc: Obj, pv: Obj) -> None:
        meta = pvc["metadata"]
        name = pv["metadata"]["name"]
        if not (_spec(pv).get("claimRef") or {}).get("uid"):
            body = copy.deepcopy(pv)
            body["spec"]["claimRef"] = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            }
            pv = await self.pvs.update(body)  # 409: requeued, re-read
        pv = await self._volume_phase(pv, "Bound")
        if _spec(pvc).get("volumeName") != name:
            body = copy.deepcopy(pvc)
            body["spec"]["volumeName"] = name
            annotations = body["metadata"].setdefault("annotations", {})
            annotations["pv.kubernetes.io/bind-completed"] = "yes"
            pvc = await self.pvcs.update(body)
        status = dict(
            pvc.get("status") or {},
            phase="Bound",
            accessModes=list(_spec(pv).get("accessModes") or []),
            capacity=dict(_spec(pv).get("capacity") or {}),
        )
        if status != pvc.get("status"):
            try:
                await self.pvcs.update_status(dict(pvc, status=status))
            except errors.NotFoundError:
                return
            log.info("bound claim %s to volume %s", object_key(pvc), name)
