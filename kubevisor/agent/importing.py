"""The node's DataVolume importer: fills a claim's image from its source, as CDI's importer pod does.

Why in the agent: the image lives on this node (a local volume), and only the agent touches a node.
The DataVolume controller (:mod:`kubevisor.controllers.datavolume`) labels a bound claim with
``kubevisor.io/import-node=<node>`` and annotates where the data comes from
(``cdi.kubevirt.io/storage.import.source`` / ``.endpoint`` / ``.secretName`` / ``.certConfigMap``); the
agent of that node watches only claims carrying its label, runs one import per claim with
:func:`kubevisor.storage.importing.import_image`, and reports on the claim, in CDI's annotation names:

- ``cdi.kubevirt.io/storage.pod.phase``: ``Running`` while it works, then ``Succeeded`` or ``Failed``;
- ``kubevisor.io/import-progress``: ``"45.67%"`` (written at most once a second);
- ``cdi.kubevirt.io/storage.pod.restarts``: retries after transient errors (backoff 1 s, doubling, ≤ 60 s,
  or the server's ``Retry-After``);
- ``cdi.kubevirt.io/storage.condition.running.reason`` / ``.message``: the last error.

Invariants: the image is written to a temporary file and renamed into place (the engine's guarantee),
and the claim reader (:mod:`kubevisor.agent.claims`) refuses a claim to import into until its phase is
``Succeeded``, so no VMI ever sees a half-written disk. An import the agent was running when it stopped
restarts from the beginning when it starts again (the phase says Running but no import runs).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from pathlib import Path
from typing import Any

from kubevisor.agent.claims import DISK_IMG
from kubevisor.agent.volumes import LocalVolumes
from kubevisor.api import cdi
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result
from kubevisor.storage import importing, registry

__all__ = ["Importer"]

log = logging.getLogger(__name__)

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
PROGRESS_INTERVAL = 1.0
FINAL = ("Succeeded", "Failed")


class ImportSetupError(Exception):
    """The claim's import cannot start as annotated (permanent: the DataVolume must change)."""


class Importer(Controller):
    """Runs the imports of claims labelled for this node."""

    name = "node-agent-importer"
    concurrency = 2

    def __init__(
        self,
        client: Client,
        *,
        node: str,
        volumes: LocalVolumes,
        image_cache: registry.ImageCache | None = None,
    ) -> None:
        super().__init__(client)
        self.node = node
        self.volumes = volumes
        self.image_cache = image_cache
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self.secrets: ResourceClient = client.resource("v1", "secrets")
        self.config_maps: ResourceClient = client.resource("v1", "configmaps")
        self._claims: Informer | None = None
        self.imports: dict[str, tuple[str, asyncio.Task[None]]] = {}
        """Imports in progress, by claim key: (claim uid, task)."""

    def setup(self) -> None:
        self._claims = self.watch(self.pvcs, label_selector=f"{cdi.IMPORT_NODE_LABEL}={self.node}")

    async def stop(self) -> None:
        tasks = [task for _, task in self.imports.values()]
        self.imports.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await super().stop()

    async def reconcile(self, key: str) -> Result | None:
        assert self._claims is not None
        pvc = self._claims.get(key)
        current = self.imports.get(key)
        uid = (pvc or {}).get("metadata", {}).get("uid")
        if current is not None and (current[0] != uid or current[1].done()):
            if not current[1].done():
                current[1].cancel()  # the claim is gone or was replaced
            self.imports.pop(key, None)
            current = None
        if pvc is None or pvc["metadata"].get("deletionTimestamp"):
            return None
        annotations = pvc["metadata"].get("annotations") or {}
        if annotations.get(cdi.POD_PHASE_ANNOTATION) in FINAL or current is not None:
            return None
        if (pvc.get("status") or {}).get("phase") != "Bound" or not annotations.get(
            cdi.IMPORT_SOURCE_ANNOTATION
        ):
            return None
        task = asyncio.create_task(self._run(key, pvc), name=f"import-{key}")
        self.imports[key] = (str(uid), task)
        return None

    # --- one import --------------------------------------------------------------------------------

    async def _annotate(self, pvc: Obj, annotations: dict[str, str | None]) -> None:
        meta = pvc["metadata"]
        try:
            await self.pvcs.patch(meta["name"], {"metadata": {"annotations": annotations}}, meta["namespace"])
        except errors.NotFoundError:
            pass

    async def _run(self, key: str, pvc: Obj) -> None:
        restarts = int((pvc["metadata"].get("annotations") or {}).get(cdi.POD_RESTARTS_ANNOTATION) or 0)
        delay = BACKOFF_START
        while True:
            await self._annotate(
                pvc, {cdi.POD_PHASE_ANNOTATION: "Running", cdi.POD_RESTARTS_ANNOTATION: str(restarts)}
            )
            try:
                await self._import(pvc)
            except asyncio.CancelledError:
                raise
            except (importing.PermanentImportError, ImportSetupError) as e:
                log.warning("import into claim %s failed: %s", key, e)
                await self._annotate(
                    pvc,
                    {
                        cdi.POD_PHASE_ANNOTATION: "Failed",
                        cdi.RUNNING_REASON_ANNOTATION: type(e).__name__,
                        cdi.RUNNING_MESSAGE_ANNOTATION: str(e),
                    },
                )
                return
            except importing.ImageImportError as e:  # transient: retry with backoff
                restarts += 1
                wait = (
                    e.retry_after
                    if isinstance(e, importing.TransientImportError) and e.retry_after
                    else delay
                )
                delay = min(delay * 2, BACKOFF_MAX)
                log.info("import into claim %s: %s; retry %d in %.0fs", key, e, restarts, wait)
                await self._annotate(
                    pvc,
                    {
                        cdi.POD_RESTARTS_ANNOTATION: str(restarts),
                        cdi.RUNNING_REASON_ANNOTATION: type(e).__name__,
                        cdi.RUNNING_MESSAGE_ANNOTATION: str(e),
                    },
                )
                await asyncio.sleep(min(wait, BACKOFF_MAX))
                continue
            await self._annotate(
                pvc,
                {
                    cdi.POD_PHASE_ANNOTATION: "Succeeded",
                    cdi.PROGRESS_ANNOTATION: "100.0%",
                    cdi.RUNNING_REASON_ANNOTATION: "Completed",
                    cdi.RUNNING_MESSAGE_ANNOTATION: "Import Complete",
                },
            )
            await self.volumes.publish()
            log.info("import into claim %s succeeded", key)
            return

    async def _import(self, pvc: Obj) -> None:
        meta = pvc["metadata"]
        annotations = meta.get("annotations") or {}
        where = f"PersistentVolumeClaim {meta['namespace']}/{meta['name']}"
        try:
            pv = await self.pvs.get(str(pvc["spec"]["volumeName"]))
        except errors.NotFoundError as e:
            raise importing.SourceUnreachable(f"{where}: its volume is not there yet") from e
        directory = self.volumes.path_of(pv)
        if directory is None:
            raise ImportSetupError(f"{where}: its volume is not a local volume of node {self.node}")
        size = parse_quantity(((pv.get("spec") or {}).get("capacity") or {}).get("storage"))
        if not size:
            raise ImportSetupError(f"{where}: its volume has no capacity.storage")
        await asyncio.to_thread(directory.mkdir, 0o700, False, True)
        target = directory / DISK_IMG
        kind = annotations.get(cdi.IMPORT_SOURCE_ANNOTATION)
        if kind == "blank":
            await asyncio.to_thread(_blank, target, int(size))
            return
        source = await self._source(str(kind), annotations, meta["namespace"], where)
        last_time, last_percent = 0.0, ""
        writes: set[asyncio.Task[None]] = set()

        def progress(p: importing.Progress) -> None:
            nonlocal last_time, last_percent
            now = time.monotonic()
            if p.percent != last_percent and now - last_time >= PROGRESS_INTERVAL and not writes:
                last_time, last_percent = now, p.percent
                task = asyncio.get_running_loop().create_task(
                    self._annotate(pvc, {cdi.PROGRESS_ANNOTATION: p.percent})
                )
                writes.add(task)
                task.add_done_callback(writes.discard)

        try:
            await importing.import_image(source, target, size=int(size), progress=progress)
        finally:
            await asyncio.gather(*writes, return_exceptions=True)

    async def _source(
        self, kind: str, annotations: dict[str, Any], namespace: str, where: str
    ) -> importing.Source:
        endpoint = str(annotations.get(cdi.IMPORT_ENDPOINT_ANNOTATION) or "")
        if not endpoint:
            raise ImportSetupError(
                f"{where}: no {cdi.IMPORT_ENDPOINT_ANNOTATION}; set the DataVolume's source"
            )
        if kind == "registry":
            if self.image_cache is None:
                raise ImportSetupError(f"{where}: node {self.node} has no registry puller")
            return importing.RegistrySource(endpoint, self.image_cache)
        if kind != "http":
            raise ImportSetupError(f"{where}: source {kind!r} is not imported by the node agent")
        user = password = ca = None
        secret_name = annotations.get(cdi.IMPORT_SECRET_ANNOTATION)
        if secret_name:
            secret = await self._read(self.secrets, str(secret_name), namespace, f"{where}: secretRef")
            data = secret.get("data") or {}
            user = base64.b64decode(data.get("accessKeyId") or "").decode() or None
            password = base64.b64decode(data.get("secretKey") or "").decode() or None
        cm_name = annotations.get(cdi.IMPORT_CERT_ANNOTATION)
        if cm_name:
            cm = await self._read(self.config_maps, str(cm_name), namespace, f"{where}: certConfigMap")
            data = cm.get("data") or {}
            ca = data.get("ca.pem") or "".join(str(v) for v in data.values()) or None
        return importing.HTTPSource(endpoint, ca_bundle=ca, access_key_id=user, secret_key=password)

    @staticmethod
    async def _read(resource: ResourceClient, name: str, namespace: str, what: str) -> Obj:
        try:
            return await resource.get(name, namespace)
        except errors.NotFoundError as e:  # may be created later: transient
            raise importing.SourceUnreachable(
                f"{what} {name!r} does not exist in namespace {namespace}"
            ) from e


def _blank(target: Path, size: int) -> None:
    """A zeroed (sparse) raw image of ``size`` bytes, renamed into place."""
    tmp = target.with_name(f".{target.name}.blank")
    with open(tmp, "wb") as f:
        f.truncate(size)
        os.fsync(f.fileno())
    os.replace(tmp, target)
