"""The node's DataVolume importer: fills a claim's image from its source, as CDI's importer pod does.

Why in the agent: the image lives on this node (a local volume), and only the agent touches a node.
The DataVolume controller (:mod:`kubevisor.controllers.datavolume`) labels a bound claim with
``kubevisor.io/import-node=<node>`` and annotates where the data comes from
(``cdi.kubevirt.io/storage.import.source`` / ``.endpoint`` / ``.secretName`` / ``.certConfigMap``, and
``kubevisor.io/import-checksum``); the
agent of that node watches only claims carrying its label, runs one import per claim with
:func:`kubevisor.storage.importing.import_image`, and reports on the claim, in CDI's annotation names:

- ``cdi.kubevirt.io/storage.pod.phase``: ``Running`` while it works, then ``Succeeded`` or ``Failed``;
- ``kubevisor.io/import-progress``: ``"45.67%"`` (written at most once a second);
- ``cdi.kubevirt.io/storage.pod.restarts``: retries after transient errors (backoff 1 s, doubling, ≤ 60 s,
  or the server's ``Retry-After``);
- ``cdi.kubevirt.io/storage.condition.running.reason`` / ``.message``: the last error.

Clones (``cdi.kubevirt.io/storage.import.source: pvc``, the source claim in ``k8s.io/CloneRequest``): the
source claim's image on this node is copied into the claim's with :func:`kubevisor.storage.cloning.
clone_image` (reflink or sparse copy, ``qemu-img convert`` between formats, grown to the claim's size; an
NFS source is read with ``qemu-img convert nfs://...``, an NFS target is filled from a local scratch copy
as imports are). A
source written during the copy is a transient error (copied again after the backoff); a source larger
than the claim fails the DataVolume.

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
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kubevisor.agent import claims, nfsvolumes
from kubevisor.agent.claims import DISK_IMG
from kubevisor.agent.volumes import LocalVolumes
from kubevisor.api import cdi, storage
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers import cloning as clone_rules
from kubevisor.controllers.provisioning import SHARED_PROVISIONER
from kubevisor.controllers.reconciling import Controller, Result
from kubevisor.storage import cloning, importing, registry
from kubevisor.virt.process import Reverter

__all__ = ["Importer"]

log = logging.getLogger(__name__)

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
PROGRESS_INTERVAL = 1.0
FINAL = ("Succeeded", "Failed")


SNAPSHOT_SOURCE_KIND = "snapshot"
"""``storage.import.source`` of a claim restored from a VolumeSnapshot (:mod:`.volumesnapshots`)."""
RestoreSnapshot = Callable[[Obj, Obj, Path, int, str], Awaitable[None]]
"""``(claim, volume, target image, size, where)``: fill the image from the claim's VolumeSnapshot."""


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
        volume_dirs: tuple[Path, ...] = (),
    ) -> None:
        super().__init__(client)
        self.node = node
        self.volumes = volumes
        self.volume_dirs = volume_dirs
        """The node's other volume directories (``--volume-dir``), where a clone's source may be."""
        self.image_cache = image_cache
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self.secrets: ResourceClient = client.resource("v1", "secrets")
        self.config_maps: ResourceClient = client.resource("v1", "configmaps")
        self._claims: Informer | None = None
        self.restore_snapshot: RestoreSnapshot | None = None
        """Fills a claim from a VolumeSnapshot (``storage.import.source: snapshot``): set by the agent to
        :meth:`kubevisor.agent.volumesnapshots.VolumeSnapshotAgent.restore`."""
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
                await self._import_any(pvc)
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

    async def _import_any(self, pvc: Obj) -> None:
        """An import into a local or shared volume; into an NFS volume (no local file: QEMU and qemu-img
        reach it over NFS), the import writes a scratch image in the node's volume directory, which is
        then copied to the server under a temporary name and renamed into place
        (:func:`kubevisor.agent.nfsvolumes.fill`)."""
        meta = pvc["metadata"]
        where = f"PersistentVolumeClaim {meta['namespace']}/{meta['name']}"
        try:
            pv = await self.pvs.get(str(pvc["spec"]["volumeName"]))
            nfs = nfsvolumes.location(pv, where)
        except errors.NotFoundError as e:
            raise importing.SourceUnreachable(f"{where}: its volume is not there yet") from e
        except nfsvolumes.NfsVolumeError as e:
            raise ImportSetupError(str(e)) from e
        if nfs is None:
            await self._import(pvc)
            return
        scratch = self.volumes.volume_dir / f".nfs-import-{meta['uid']}"
        try:
            await self._import(pvc, directory=scratch)
            size = parse_quantity(((pv.get("spec") or {}).get("capacity") or {}).get("storage"))
            annotation = (pv["metadata"].get("annotations") or {}).get(claims.FORMAT_ANNOTATION) or "raw"
            await nfsvolumes.fill(
                nfs,
                where,
                source=str(scratch / DISK_IMG),
                size=int(size or 0),
                source_format="qcow2" if annotation == "qcow2" else "raw",
                target_format="qcow2" if annotation == "qcow2" else "raw",
            )
        except nfsvolumes.NfsVolumeError as e:
            raise importing.SourceUnreachable(str(e)) from e  # the server may come back: retried
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _import(self, pvc: Obj, directory: Path | None = None) -> None:
        meta = pvc["metadata"]
        annotations = meta.get("annotations") or {}
        where = f"PersistentVolumeClaim {meta['namespace']}/{meta['name']}"
        try:
            pv = await self.pvs.get(str(pvc["spec"]["volumeName"]))
        except errors.NotFoundError as e:
            raise importing.SourceUnreachable(f"{where}: its volume is not there yet") from e
        directory = directory or self.volumes.path_of(pv) or self._shared_directory(pv)
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
        if kind == clone_rules.SOURCE_KIND:
            await self._clone(pvc, pv, target, int(size), where)
            return
        if kind == SNAPSHOT_SOURCE_KIND:
            if self.restore_snapshot is None:  # the agent is starting: it is set once its parts run
                raise importing.SourceUnreachable(f"{where}: VolumeSnapshot restores are not running yet")
            await self.restore_snapshot(pvc, pv, target, int(size), where)
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

    async def _clone(self, pvc: Obj, pv: Obj, target: Path, size: int, where: str) -> None:
        """A clone (``spec.source.pvc``): the source claim's image copied into ``target`` on this node
        (:mod:`kubevisor.storage.cloning`). The DataVolume controller labels the claim for this node only
        once the source is filled, not in use and on this node (:mod:`kubevisor.controllers.cloning`)."""
        request = str(
            (pvc["metadata"].get("annotations") or {}).get(clone_rules.CLONE_REQUEST_ANNOTATION) or ""
        )
        namespace, _, name = request.partition("/")
        if not namespace or not name:
            raise ImportSetupError(
                f"{where}: no {clone_rules.CLONE_REQUEST_ANNOTATION} naming the source claim"
            )

        async def read(resource: str, obj_name: str) -> Obj | None:
            try:
                found: Obj = await self.client.resource("v1", resource).get(
                    obj_name, None if resource == "persistentvolumes" else namespace
                )
            except errors.NotFoundError:
                return None
            return found

        field = f"{where}: clone source"
        vmis = await self.client.resource("kubevirt.io/v1", "virtualmachineinstances").list(namespace)
        users = clone_rules.users_of(vmis, namespace, name)
        if users:  # started after the controller handed the clone over: it must not be read while written
            raise importing.SourceUnreachable(
                f"{where}: the source pvc {namespace}/{name} is in use by VirtualMachineInstance "
                f"{', '.join(users)}; the clone starts once it is stopped"
            )
        try:
            async with Reverter() as revert:
                source = await claims.resolve(
                    name,
                    field,
                    namespace=namespace,
                    node=self.node,
                    volume_dirs=(self.volumes.volume_dir, *self.volume_dirs),
                    read=read,
                    revert=revert,
                )
                revert.success()
        except claims.ClaimNotReady as e:
            raise importing.SourceUnreachable(str(e)) from e
        except claims.ClaimError as e:
            raise ImportSetupError(str(e)) from e
        if str(source.path) == await asyncio.to_thread(os.path.realpath, target):
            raise ImportSetupError(f"{where}: the clone's source is the target itself")
        annotation = (pv["metadata"].get("annotations") or {}).get(claims.FORMAT_ANNOTATION) or "raw"
        target_format: cloning.ImageFormat = "qcow2" if annotation == "qcow2" else "raw"
        writes: set[asyncio.Task[None]] = set()
        last_percent = ""

        def progress(fraction: float) -> None:
            nonlocal last_percent
            percent = importing.format_percent(fraction)
            if percent != last_percent and not writes:
                last_percent = percent
                task = asyncio.get_running_loop().create_task(
                    self._annotate(pvc, {cdi.PROGRESS_ANNOTATION: percent})
                )
                writes.add(task)
                task.add_done_callback(writes.discard)

        try:
            result = await cloning.clone_image(
                source.path,
                target,
                size=size,
                source_format=source.format,
                target_format=target_format,
                progress=progress,
                source_server=source.nfs_server,  # an NFS source is read over NFS (qemu-img convert)
            )
        finally:
            await asyncio.gather(*writes, return_exceptions=True)
        log.info(
            "clone of claim %s/%s into %s: %s of %d bytes in %.2f s",
            namespace,
            name,
            where,
            result.method,
            result.virtual_size,
            result.seconds,
        )

    def _shared_directory(self, pv: Obj) -> Path | None:
        """The directory of a shared class's hostPath volume (every node mounts it at the same path), if
        it is under one of this node's volume directories."""
        annotations = pv["metadata"].get("annotations") or {}
        path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
        if annotations.get(storage.PROVISIONED_BY_ANNOTATION) != SHARED_PROVISIONER or not path:
            return None
        directory = Path(os.path.normpath(str(path)))
        roots = (self.volumes.volume_dir, *self.volume_dirs)
        if not any(
            directory.is_relative_to(os.path.normpath(root)) and directory != Path(root) for root in roots
        ):
            return None
        return directory

    async def _source(
        self, kind: str, annotations: dict[str, Any], namespace: str, where: str
    ) -> importing.Source:
        endpoint = str(annotations.get(cdi.IMPORT_ENDPOINT_ANNOTATION) or "")
        if not endpoint:
            raise ImportSetupError(
                f"{where}: no {cdi.IMPORT_ENDPOINT_ANNOTATION}; set the DataVolume's source"
            )
        if kind not in ("http", "s3", "registry"):
            raise ImportSetupError(f"{where}: source {kind!r} is not imported by the node agent")
        # secretRef: accessKeyId and secretKey (http basic auth, S3 keys, registry login), as CDI has them
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
        if kind == "registry":
            if self.image_cache is None:
                raise ImportSetupError(f"{where}: node {self.node} has no registry puller")
            if secret_name and not (user and password):
                raise ImportSetupError(
                    f"{where}: secretRef Secret {secret_name!r} needs both accessKeyId (the registry user "
                    "name) and secretKey (its password)"
                )
            credentials = registry.Credentials(user, password) if user and password else None
            return importing.RegistrySource(endpoint, self.image_cache, credentials=credentials, ca_bundle=ca)
        if kind == "s3":
            return importing.S3Source(endpoint, access_key_id=user, secret_key=password, ca_bundle=ca)
        checksum = annotations.get(cdi.IMPORT_CHECKSUM_ANNOTATION) or None
        return importing.HTTPSource(
            endpoint, ca_bundle=ca, access_key_id=user, secret_key=password, checksum=checksum
        )

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
