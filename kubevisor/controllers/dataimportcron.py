"""The DataImportCron controller (cdi.kubevirt.io/v1beta1): golden images kept up to date on a schedule.

What CDI's ``dataimportcron-controller`` does, for registry sources (the only ones CDI's webhook admits;
an ``http`` source is refused there and here). On each tick of ``spec.schedule`` (cron syntax, parsed with
``croniter``) and once at creation, the controller asks the registry which digest the template's
``registry.url`` tag points to now (:func:`kubevisor.storage.digests.current_digest`: one ``HEAD`` from
the controller process, as CDI's controller polls for node pulls). The poll logs in and trusts as the
import will: with the template's ``registry.secretRef`` (a Secret with ``accessKeyId`` = user name and
``secretKey`` = password, CDI's keys) and ``registry.certConfigMap`` (PEM CAs, key ``ca.pem``; the registry
is then spoken to over HTTPS, even on loopback), both read through the API in the cron's namespace.
Loopback registries are polled over plain HTTP, and so are the ``--insecure-registry`` ones of
``kubevisor up`` (the controller manager gets the node agent's setting). When the digest is new:

1. it creates a DataVolume ``<managedDataSource>-<first 12 hex digits of the digest>`` from
   ``spec.template``, its url pinned to the digest (``docker://host/repo@sha256:...``), labelled
   ``cdi.kubevirt.io/dataImportCron=<cron>`` and annotated ``storage.import.lastUseTime``;
2. once that DataVolume has ``Succeeded``, its claim gets the same label and annotation, becomes
   ``status.lastImportedPVC`` (``lastImportTimestamp``), and the managed DataSource (created, labelled,
   if it does not exist) points at it: ``spec.source.pvc``;
3. with ``garbageCollect: Outdated`` (the default), only the ``importsToKeep`` (default 3) most recently
   used claims of the cron are kept: older ones are deleted with their DataVolumes.

Status, as CDI writes it: ``currentImports`` (``DataVolumeName``, ``Digest``: CDI's capitals),
``lastImportedPVC``, ``lastImportTimestamp``, ``lastExecutionTimestamp`` (the last poll), ``sourceFormat``
(``pvc``), and conditions ``UpToDate`` (``UpToDate`` | ``Outdated`` | ``ImportProgressing`` |
``NoDigest``) and ``Progressing`` (``ImportScheduled`` | ``ImportProgressing`` | ``NoImport`` | the
DataVolume's phase).

Schedule bookkeeping lives in CDI's annotations on the cron: ``storage.import.nextCronTime`` (when the
next poll is due; **set it to a past time, e.g. now, to poll at once**, which is how tests tick without
waiting for the clock), ``storage.import.lastCronTime`` and ``storage.import.sourceDesiredDigest``. A
poll that fails (registry unreachable, unknown tag, refused login, untrusted certificate, a missing
Secret or ConfigMap) leaves the tick due, emits a ``Warning`` Event ``PollSourceFailed`` naming the image
(and, for a refused login, the Secret), and is retried with backoff; until a poll succeeds the cron is
``UpToDate: False``, reason ``NoDigest``, the error in the message. An empty schedule never polls.

A DataSource already labelled for another cron that manages it is left alone (Event
``ErrDataSourceAlreadyManaged``). When the cron is deleted, what it labelled
``cdi.kubevirt.io/dataImportCron.cleanup=true`` (``retentionPolicy: None``) is deleted too; with
any other policy (CDI's ``All``, the default) the imports and the DataSource stay.

Owner of DataImportCron ``status`` and of the three annotations above; of the DataVolumes it creates,
and the cron label and last-use annotation on their claims; of the managed DataSource's ``spec.source``.
Keys: ``namespace/name`` of the DataImportCron.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import hashlib
import logging
from collections.abc import Callable

from croniter import croniter

from kubevisor.api import cdi
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.datasource import set_condition
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError
from kubevisor.storage import digests, registry

__all__ = [
    "DEFAULT_IMPORTS_TO_KEEP",
    "DataImportCronController",
    "digested_url",
    "import_name",
    "next_tick",
]

log = logging.getLogger(__name__)

GROUP_VERSION = f"{cdi.GROUP}/{cdi.VERSION}"
DEFAULT_IMPORTS_TO_KEEP = 3
DIGEST_NAME_LENGTH = 12
MAX_NAME = 63

# condition reasons (CDI's dataimportcron-conditions.go)
NO_DIGEST = "NoDigest"
NO_IMPORT = "NoImport"
OUTDATED = "Outdated"
SCHEDULED = "ImportScheduled"
IN_PROGRESS = "ImportProgressing"
UP_TO_DATE = "UpToDate"
ALREADY_MANAGED = "ErrDataSourceAlreadyManaged"

# --- pure parts ------------------------------------------------------------------------------------


def _utc(moment: datetime.datetime) -> datetime.datetime:
    return moment.astimezone(datetime.UTC) if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def rfc3339(moment: datetime.datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(moment: datetime.datetime) -> str:
    """With microseconds, zero-padded: last-use times sort as text (CDI writes RFC 3339 with nanoseconds)."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    """An RFC 3339 time (as CDI writes ``nextCronTime``), or None if absent or unreadable."""
    if not text:
        return None
    try:
        return _utc(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def next_tick(schedule: str, after: datetime.datetime) -> datetime.datetime:
    """The first time strictly after ``after`` that ``schedule`` (five cron fields, UTC) fires."""
    result = croniter(schedule, _utc(after)).get_next(datetime.datetime)
    assert isinstance(result, datetime.datetime)
    return _utc(result)


def import_name(managed_data_source: str, digest: str) -> str:
    """CDI's name of the DataVolume importing ``digest``: ``<DataSource>-<12 hex digits>`` (a long
    DataSource name is shortened, with a hash of it, to keep the name a valid 63-character label)."""
    algorithm, _, hexdigits = digest.partition(":")
    if algorithm != "sha256" or len(hexdigits) < DIGEST_NAME_LENGTH:
        raise ValueError(f"digest {digest!r} is not sha256:<hex>")
    suffix = hexdigits[:DIGEST_NAME_LENGTH]
    name = f"{managed_data_source}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    mark = hashlib.sha256(managed_data_source.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(mark) - 2
    return f"{managed_data_source[:keep].rstrip('-.')}-{mark}-{suffix}"


def digested_url(url: str, digest: str) -> str:
    """``docker://host/repo:tag`` -> ``docker://host/repo@<digest>``: the import gets exactly what was
    polled, even if the tag moves meanwhile (CDI's ``untagDigestedDockerURL``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "docker", url
    name = rest.split("@", 1)[0]
    head, slash, last = name.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{scheme}://{head}{slash}{last}@{digest}"


def _digest_of(import_status: Obj) -> str:
    return str(import_status.get("Digest") or "")


# --- the controller --------------------------------------------------------------------------------


class DataImportCronController(Controller):
    """Polls each DataImportCron's registry image on its schedule and keeps its DataSource on the latest
    import (module docstring)."""

    name = "dataimportcron"
    concurrency = 2

    def __init__(
        self,
        client: Client,
        *,
        concurrency: int | None = None,
        insecure_registries: tuple[str, ...] = (),
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        super().__init__(client, concurrency=concurrency)
        self.crons: ResourceClient = client.resource(GROUP_VERSION, "dataimportcrons")
        self.sources: ResourceClient = client.resource(GROUP_VERSION, "datasources")
        self.dvs: ResourceClient = client.resource(GROUP_VERSION, "datavolumes")
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.secrets: ResourceClient = client.resource("v1", "secrets")
        self.config_maps: ResourceClient = client.resource("v1", "configmaps")
        self.recorder = EventRecorder(client, "dataimportcron-controller")
        self.insecure_registries = tuple(insecure_registries)
        """``HOST[:PORT]`` of registries polled over plain HTTP (the node agent's ``--insecure-registry``;
        loopback registries always are, unless a ``certConfigMap`` asks for TLS)."""
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._crons: Informer | None = None
        self._sources: Informer | None = None
        self._dvs: Informer | None = None
        self._claims: Informer | None = None
        self._written: dict[str, int] = {}
        """The resourceVersion of each cron's last write here: an older cached copy is not acted on (it
        would poll a tick already polled)."""

    def setup(self) -> None:
        self._crons = self.watch(self.crons)
        self._sources = self.watch(self.sources, keys=self._cron_keys)
        self._dvs = self.watch(self.dvs, keys=self._cron_keys)
        self._claims = self.watch(self.pvcs, keys=self._cron_keys)

    @staticmethod
    def _cron_keys(obj: Obj) -> list[str]:
        meta = obj.get("metadata") or {}
        cron = (meta.get("labels") or {}).get(cdi.DATA_IMPORT_CRON_LABEL)
        return [f"{meta.get('namespace')}/{cron}"] if cron else []

    async def current_digest(
        self, image: str, credentials: registry.Credentials | None, ca_bundle: str | None = None
    ) -> str:
        """The registry poll (a seam: tests may replace it, the e2e tests use a real registry)."""
        return await digests.current_digest(
            image, credentials=credentials, ca_bundle=ca_bundle, insecure_registries=self.insecure_registries
        )

    # --- reconcile -------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        assert self._crons is not None and self._sources is not None
        assert self._dvs is not None and self._claims is not None
        namespace, _, name = key.partition("/")
        cron = self._crons.get(key)
        if cron is None or cron["metadata"].get("deletionTimestamp"):
            self._written.pop(key, None)
            await self._cleanup(namespace, name)
            return None
        seen = str(cron["metadata"].get("resourceVersion") or "")
        if seen.isdigit() and int(seen) < self._written.get(key, 0):
            raise TemporaryError("the cache has not seen this controller's last write yet", delay=0.2)
        spec = cron.get("spec") or {}
        managed = str(spec.get("managedDataSource") or "")
        if await self._managed_elsewhere(cron, managed):
            return None
        now = self.clock()
        annotations = dict(cron["metadata"].get("annotations") or {})
        old_status = cron.get("status") or {}
        status: Obj = copy.deepcopy(old_status)
        conditions: list[Obj] = list(status.get("conditions") or [])
        imports: list[Obj] = list(status.get("currentImports") or [])

        dv = pvc = None
        if imports:
            current = f"{namespace}/{imports[0].get('DataVolumeName')}"
            dv, pvc = self._dvs.get(current), self._claims.get(current)

        succeeded = False
        if dv is not None:
            phase = str((dv.get("status") or {}).get("phase") or "")
            if phase == "Succeeded":
                succeeded = True
            elif phase == "ImportScheduled":
                conditions = set_condition(
                    conditions, "Progressing", "False", SCHEDULED, "Import is scheduled"
                )
            elif phase == "ImportInProgress":
                conditions = set_condition(
                    conditions, "Progressing", "True", IN_PROGRESS, "Import is progressing"
                )
            else:
                conditions = set_condition(
                    conditions, "Progressing", "False", phase or "Pending", f"Import DataVolume phase {phase}"
                )
        elif pvc is not None and (pvc.get("status") or {}).get("phase") == "Bound":
            succeeded = True
        elif imports:
            imports = imports[1:]
        if not succeeded and dv is None:
            conditions = set_condition(conditions, "Progressing", "False", NO_IMPORT, "No current import")

        if succeeded:
            if pvc is not None:
                await self._touch_claim(cron, pvc, now)
            imported = {"namespace": namespace, "name": str(imports[0]["DataVolumeName"])}
            if status.get("lastImportedPVC") != imported:
                status["lastImportedPVC"] = imported
                status["lastImportTimestamp"] = rfc3339(now)
            conditions = set_condition(conditions, "Progressing", "False", NO_IMPORT, "No current import")
            await self._collect_garbage(cron, imported["name"])

        await self._update_data_source(cron, managed, status.get("lastImportedPVC"))

        requeue: float | None = None
        poll_error: str | None = None
        schedule = str(spec.get("schedule") or "")
        if schedule:
            due = parse_time(annotations.get(cdi.NEXT_CRON_TIME_ANNOTATION))
            if due is None or due <= now:
                try:
                    digest = await self._poll(cron, namespace)
                except registry.RegistryError as e:
                    poll_error = str(e)
                    await self.recorder.warning(cron, "PollSourceFailed", f"DataImportCron {key}: {e}")
                    annotations[cdi.NEXT_CRON_TIME_ANNOTATION] = rfc3339(due or now)
                else:
                    annotations[cdi.LAST_CRON_TIME_ANNOTATION] = rfc3339(now)
                    annotations[cdi.DESIRED_DIGEST_ANNOTATION] = digest
                    due = next_tick(schedule, now)
                    annotations[cdi.NEXT_CRON_TIME_ANNOTATION] = rfc3339(due)
            if poll_error is None and due is not None:
                requeue = max((due - now).total_seconds(), 0.0) + 0.5

        desired = annotations.get(cdi.DESIRED_DIGEST_ANNOTATION) or ""
        if desired and (not imports or desired != _digest_of(imports[0])):
            conditions = set_condition(
                conditions, "UpToDate", "False", OUTDATED, "Source digest updated since last import"
            )
            if dv is not None and self._failed_for_good(dv):
                await self._delete(self.dvs, dv)
                imports = []
            if succeeded or not imports:
                imports = [await self._create_import(cron, desired, now)]
        elif succeeded:
            status["sourceFormat"] = "pvc"
            conditions = set_condition(
                conditions, "UpToDate", "True", UP_TO_DATE, "Latest import is up to date"
            )
        elif imports:
            conditions = set_condition(conditions, "UpToDate", "False", IN_PROGRESS, "Import is progressing")
        else:
            why = f"No source digest: {poll_error}" if poll_error else "No source digest"
            conditions = set_condition(conditions, "UpToDate", "False", NO_DIGEST, why)

        status["currentImports"] = imports
        status["conditions"] = conditions
        if annotations.get(cdi.LAST_CRON_TIME_ANNOTATION):
            status["lastExecutionTimestamp"] = annotations[cdi.LAST_CRON_TIME_ANNOTATION]
        await self._write(cron, annotations, status)
        if poll_error is not None:
            raise TemporaryError(f"polling the source of DataImportCron {key}: {poll_error}")
        return Result(requeue_after=requeue) if requeue is not None else None

    async def _managed_elsewhere(self, cron: Obj, managed: str) -> bool:
        """True when ``managed`` belongs to another cron that names it (CDI's ``shouldReconcileCron``)."""
        assert self._sources is not None and self._crons is not None
        namespace, name = cron["metadata"]["namespace"], cron["metadata"]["name"]
        ds = self._sources.get(f"{namespace}/{managed}")
        owner = ((ds or {}).get("metadata", {}).get("labels") or {}).get(cdi.DATA_IMPORT_CRON_LABEL)
        if ds is None or not owner or owner == name:
            return False
        other = self._crons.get(f"{namespace}/{owner}")
        if other is None or (other.get("spec") or {}).get("managedDataSource") != managed:
            return False
        await self.recorder.warning(
            cron, ALREADY_MANAGED, f"DataSource {managed} is already managed by DataImportCron {owner}"
        )
        return True

    async def _poll(self, cron: Obj, namespace: str) -> str:
        source = ((cron["spec"].get("template") or {}).get("spec") or {}).get("source") or {}
        reg = source.get("registry") or {}
        url = reg.get("url")
        if not url:
            raise registry.InvalidReference(
                f"DataImportCron {namespace}/{cron['metadata']['name']}: "
                "spec.template.spec.source.registry.url is not set"
            )
        secret_name = str(reg.get("secretRef") or "")
        credentials = await self._credentials(secret_name, namespace) if secret_name else None
        cm_name = str(reg.get("certConfigMap") or "")
        ca_bundle = await self._ca_bundle(cm_name, namespace) if cm_name else None
        try:
            return await self.current_digest(str(url), credentials, ca_bundle)
        except registry.Unauthorized as e:
            if credentials is None:
                raise
            raise registry.Unauthorized(
                f"the registry refused the login of Secret {namespace}/{secret_name} "
                f"(spec.template.spec.source.registry.secretRef): {e}"
            ) from e

    async def _credentials(self, secret_name: str, namespace: str) -> registry.Credentials:
        """CDI's registry secret: ``accessKeyId`` (user name) and ``secretKey`` (password), both needed
        (as the node agent's import of the DataVolume wants them)."""
        where = f"Secret {namespace}/{secret_name} (spec.template.spec.source.registry.secretRef)"
        try:
            secret = await self.secrets.get(secret_name, namespace)
        except errors.NotFoundError:
            raise registry.Unauthorized(
                f"{where} does not exist; create it with accessKeyId and secretKey"
            ) from None
        data = secret.get("data") or {}
        try:
            user = base64.b64decode(str(data.get("accessKeyId") or ""), validate=True).decode()
            password = base64.b64decode(str(data.get("secretKey") or ""), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise registry.Unauthorized(
                f"{where}: accessKeyId or secretKey is not base64 of UTF-8 text"
            ) from None
        if not (user and password):
            raise registry.Unauthorized(
                f"{where} needs both accessKeyId (the registry user name) and secretKey (its password)"
            )
        return registry.Credentials(user, password)

    async def _ca_bundle(self, name: str, namespace: str) -> str:
        """The PEM CA certificates of CDI's ``certConfigMap`` (key ``ca.pem``, else all its values, as the
        node agent reads it): the registry's certificate must verify against them (or the system's)."""
        where = f"ConfigMap {namespace}/{name} (spec.template.spec.source.registry.certConfigMap)"
        try:
            cm = await self.config_maps.get(name, namespace)
        except errors.NotFoundError:
            raise registry.Untrusted(
                f"{where} does not exist; create it with the registry's CA in ca.pem"
            ) from None
        data = cm.get("data") or {}
        bundle = str(data.get("ca.pem") or "".join(str(v) for v in data.values()))
        if not bundle.strip():
            raise registry.Untrusted(f"{where} holds no CA certificate; put the registry's CA in ca.pem")
        return bundle

    @staticmethod
    def _failed_for_good(dv: Obj) -> bool:
        """An import CDI deletes to try the newer digest: its Running condition says it failed."""
        if (dv.get("status") or {}).get("phase") == "Failed":
            return True
        for condition in (dv.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "Running" and condition.get("status") == "False":
                return condition.get("reason") in ("Error", "ImagePullFailed")
        return False

    def _labels(self, cron: Obj) -> dict[str, str]:
        labels = {cdi.DATA_IMPORT_CRON_LABEL: str(cron["metadata"]["name"])}
        if (cron.get("spec") or {}).get("retentionPolicy") == "None":
            labels[cdi.DATA_IMPORT_CRON_CLEANUP_LABEL] = "true"
        return labels

    async def _create_import(self, cron: Obj, digest: str, now: datetime.datetime) -> Obj:
        """The DataVolume importing ``digest`` (or the claim a previous one left), as an ImportStatus."""
        assert self._claims is not None
        namespace = cron["metadata"]["namespace"]
        spec = cron.get("spec") or {}
        name = import_name(str(spec["managedDataSource"]), digest)
        existing = self._claims.get(f"{namespace}/{name}")
        if existing is not None:
            await self._touch_claim(cron, existing, now)
            return {"DataVolumeName": name, "Digest": digest}
        template = copy.deepcopy(spec.get("template") or {})
        meta = template.get("metadata") or {}
        dv_spec = template.get("spec") or {}
        reg = dv_spec["source"]["registry"]
        reg["url"] = digested_url(str(reg["url"]), digest)
        dv = {
            "apiVersion": GROUP_VERSION,
            "kind": "DataVolume",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {**(meta.get("labels") or {}), **self._labels(cron)},
                "annotations": {
                    **(meta.get("annotations") or {}),
                    cdi.IMMEDIATE_BINDING_ANNOTATION: "true",
                    cdi.LAST_USE_TIME_ANNOTATION: rfc3339_micro(now),
                },
            },
            "spec": dv_spec,
        }
        try:
            await self.dvs.create(dv, namespace)
        except errors.AlreadyExistsError:
            pass
        else:
            await self.recorder.normal(
                cron, "ImportCreated", f"Created DataVolume {name} importing {reg['url']}"
            )
        return {"DataVolumeName": name, "Digest": digest}

    async def _touch_claim(self, cron: Obj, pvc: Obj, now: datetime.datetime) -> None:
        """Label an imported claim for its cron and mark it used now (garbage collection keeps the most
        recently used); written once per use, not on every pass."""
        meta = pvc["metadata"]
        labels = meta.get("labels") or {}
        wanted = self._labels(cron)
        used = (meta.get("annotations") or {}).get(cdi.LAST_USE_TIME_ANNOTATION)
        if used and all(labels.get(k) == v for k, v in wanted.items()):
            return
        await self.pvcs.patch(
            meta["name"],
            {
                "metadata": {
                    "labels": wanted,
                    "annotations": {cdi.LAST_USE_TIME_ANNOTATION: rfc3339_micro(now)},
                }
            },
            meta["namespace"],
        )

    async def _collect_garbage(self, cron: Obj, current: str) -> None:
        """``garbageCollect: Outdated``: keep the ``importsToKeep`` most recently used claims, counting
        the ``current`` import, which is never deleted (the DataSource points at it)."""
        assert self._claims is not None and self._dvs is not None
        spec = cron.get("spec") or {}
        if (spec.get("garbageCollect") or "Outdated") != "Outdated":
            return
        keep = spec.get("importsToKeep")
        keep = DEFAULT_IMPORTS_TO_KEEP if keep is None or keep < 0 else int(keep)
        namespace, name = cron["metadata"]["namespace"], cron["metadata"]["name"]
        mine = [
            c
            for c in self._claims.list()
            if c["metadata"].get("namespace") == namespace
            and (c["metadata"].get("labels") or {}).get(cdi.DATA_IMPORT_CRON_LABEL) == name
            and not c["metadata"].get("deletionTimestamp")
            and c["metadata"].get("name") != current
        ]
        mine.sort(
            key=lambda c: (c["metadata"].get("annotations") or {}).get(cdi.LAST_USE_TIME_ANNOTATION) or "",
            reverse=True,
        )
        for old in mine[max(keep - 1, 0) :]:
            old_name = old["metadata"]["name"]
            log.info("DataImportCron %s/%s: deleting outdated import %s", namespace, name, old_name)
            dv = self._dvs.get(f"{namespace}/{old_name}")
            if dv is not None:
                await self._delete(self.dvs, dv)  # its claim goes with it (owner reference)
            else:
                await self._delete(self.pvcs, old)

    async def _update_data_source(self, cron: Obj, managed: str, imported: Obj | None) -> None:
        """Create the managed DataSource if missing; point it at the last import (if it is ours)."""
        assert self._sources is not None
        namespace, name = cron["metadata"]["namespace"], cron["metadata"]["name"]
        ds = self._sources.get(f"{namespace}/{managed}")
        labels = self._labels(cron)
        if ds is None:
            ds = {
                "apiVersion": GROUP_VERSION,
                "kind": "DataSource",
                "metadata": {"name": managed, "namespace": namespace, "labels": labels},
                "spec": {"source": {"pvc": dict(imported)} if imported else {}},
            }
            try:
                await self.sources.create(ds, namespace)
            except errors.AlreadyExistsError:
                raise TemporaryError("the DataSource exists but is not in the cache yet", delay=0.5) from None
            return
        current = ds["metadata"].get("labels") or {}
        if current.get(cdi.DATA_IMPORT_CRON_LABEL) != name:
            log.info(
                "DataSource %s/%s is not managed by DataImportCron %s; not updating", namespace, managed, name
            )
            return
        patch: Obj = {}
        if any(current.get(k) != v for k, v in labels.items()):
            patch["metadata"] = {"labels": labels}
        source = (ds.get("spec") or {}).get("source") or {}
        if imported and source != {"pvc": dict(imported)}:
            patch["spec"] = {"source": {"pvc": dict(imported), "snapshot": None, "dataSource": None}}
        if patch:
            await self.sources.patch(managed, patch, namespace)

    async def _write(self, cron: Obj, annotations: dict[str, str], status: Obj) -> None:
        """Annotations (metadata) and status in their own calls, each on the version read (409: again)."""
        meta = cron["metadata"]
        if annotations != (meta.get("annotations") or {}):
            changed = {k: v for k, v in annotations.items() if (meta.get("annotations") or {}).get(k) != v}
            cron = await self.crons.patch(
                meta["name"],
                {"metadata": {"annotations": changed, "resourceVersion": meta.get("resourceVersion")}},
                meta["namespace"],
            )
        if status != (cron.get("status") or {}):
            try:
                cron = await self.crons.update_status(dict(cron, status=status))
            except errors.NotFoundError:
                return
        written = str(cron["metadata"].get("resourceVersion") or "")
        if written.isdigit():
            self._written[f"{meta['namespace']}/{meta['name']}"] = int(written)

    async def _delete(self, resources: ResourceClient, obj: Obj) -> None:
        meta = obj["metadata"]
        try:
            await resources.delete(meta["name"], meta["namespace"], preconditions={"uid": meta["uid"]})
        except (errors.NotFoundError, errors.ConflictError):
            return

    async def _cleanup(self, namespace: str, name: str) -> None:
        """The cron is gone: delete what it labelled for cleanup (``retentionPolicy: None``)."""
        assert self._sources is not None and self._dvs is not None and self._claims is not None
        for informer, resources in (
            (self._sources, self.sources),
            (self._dvs, self.dvs),
            (self._claims, self.pvcs),
        ):
            for obj in informer.list():
                meta = obj["metadata"]
                labels = meta.get("labels") or {}
                if (
                    meta.get("namespace") == namespace
                    and labels.get(cdi.DATA_IMPORT_CRON_LABEL) == name
                    and labels.get(cdi.DATA_IMPORT_CRON_CLEANUP_LABEL) == "true"
                    and not meta.get("deletionTimestamp")
                ):
                    await self._delete(resources, obj)
