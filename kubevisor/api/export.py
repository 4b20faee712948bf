"""export.kubevirt.io/v1: VirtualMachineExport, a claim, a VM's claims or a VM snapshot's images offered for
download.

JSON names follow KubeVirt's ``staging/src/kubevirt.io/api/export/v1/types.go``. The export controller
(:mod:`kubevisor.controllers.export`) owns ``status``; the apiserver serves the downloads
(:mod:`kubevisor.apiserver.exports`) from the node agent that holds the data, authenticated by the export's
token (the ``token`` key of the Secret ``status.tokenSecretRef``), as KubeVirt's export proxy does.

Validation is virt-api's without lookups: ``spec.source`` names a ``PersistentVolumeClaim`` (core group),
a ``snapshot.kubevirt.io`` ``VirtualMachineSnapshot`` or a ``kubevirt.io`` ``VirtualMachine``;
``ttlDuration`` is a Go duration; the spec does not change after creation.
"""

from __future__ import annotations

import re

from kubevisor.api.base import KubeModel
from kubevisor.api.core import TypedLocalObjectReference
from kubevisor.api.meta import ObjectMeta
from kubevisor.api.registry import Kind, Obj, PrinterColumn
from kubevisor.api.validation import FieldError

GROUP = "export.kubevirt.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "virtualmachineexports"

DEFAULT_TTL = "2h"
"""KubeVirt's default ``spec.ttlDuration``."""
TOKEN_KEY = "token"
"""The key of the token in the token Secret."""
TOKEN_HEADER = "x-kubevirt-export-token"
"""The header (or query parameter) that carries the token, as KubeVirt's export server reads it."""
FORMAT_RAW = "raw"
"""``disk.img``: the disk as the guest sees it."""
FORMAT_GZIP = "gzip"
"""``disk.img.gz``: the same, gzip-compressed."""
FILES = {FORMAT_RAW: "disk.img", FORMAT_GZIP: "disk.img.gz"}
"""Format -> the file name that ends its URL."""

SOURCE_KINDS = {
    "PersistentVolumeClaim": "",
    "VirtualMachineSnapshot": "snapshot.kubevirt.io",
    "VirtualMachine": "kubevirt.io",
}
"""Kinds an export may name, with their API group."""


def token_secret_name(export_name: str) -> str:
    """The token Secret the controller generates when ``spec.tokenSecretRef`` is unset (KubeVirt's name)."""
    return f"export-token-{export_name}"


def download_path(namespace: str, name: str, volume: str, fmt: str) -> str:
    """The apiserver path of one volume in one format (KubeVirt's export proxy path)."""
    return f"/api/{GROUP}/{VERSION}/namespaces/{namespace}/{name}/volumes/{volume}/{FILES[fmt]}"


class Condition(KubeModel):
    """A condition of an export: Ready, PVCReady."""

    type: str
    """Condition type."""
    status: str
    """True, False or Unknown."""
    last_probe_time: str | None = None
    """When the condition was last checked."""
    last_transition_time: str | None = None
    """When the status last changed."""
    reason: str | None = None
    """Machine-readable reason (podReady, inUse, pvcBound, pvcPending, ...)."""
    message: str | None = None
    """Human-readable message."""


class VirtualMachineExportSpec(KubeModel):
    """What to export, and for how long."""

    source: TypedLocalObjectReference
    """The claim, VM snapshot or VM to export."""
    token_secret_ref: str | None = None
    """A Secret in the namespace whose ``token`` key authenticates downloads; unset: one is generated."""
    ttl_duration: str | None = None
    """How long the export lives (a Go duration, default 2h); then it is deleted."""


class VirtualMachineExportVolumeFormat(KubeModel):
    """One format of an exported volume."""

    format: str
    """raw (disk.img) or gzip (disk.img.gz); KubeVirt also knows dir and tar.gz (filesystem content)."""
    url: str
    """Where to download it."""


class VirtualMachineExportVolume(KubeModel):
    """An exported volume."""

    name: str
    """The volume's name: the claim's name."""
    formats: list[VirtualMachineExportVolumeFormat] | None = None
    """The formats it is available in."""


class VirtualMachineExportManifest(KubeModel):
    """A manifest available from the export."""

    type: str
    """What it holds (all, auth-header-secret)."""
    url: str
    """Where to download it."""


class VirtualMachineExportLink(KubeModel):
    """The links of one way in (internal or external)."""

    cert: str
    """The CA certificate (PEM) that signs the server's certificate."""
    volumes: list[VirtualMachineExportVolume] | None = None
    """The exported volumes."""
    manifests: list[VirtualMachineExportManifest] | None = None
    """Manifests to re-create the source elsewhere (not served by kubevisor yet)."""


class VirtualMachineExportLinks(KubeModel):
    """Where the export is served."""

    internal: VirtualMachineExportLink | None = None
    """From inside the cluster (here: the same API server)."""
    external: VirtualMachineExportLink | None = None
    """From outside the cluster (the API server's address)."""


class VirtualMachineExportStatus(KubeModel):
    """Observed state of an export; owner: the export controller."""

    phase: str | None = None
    """Pending (the source is not ready or in use), Ready, Terminated, Skipped (nothing to export)."""
    links: VirtualMachineExportLinks | None = None
    """The download URLs, once Ready."""
    token_secret_ref: str | None = None
    """The Secret holding the token (spec.tokenSecretRef, or the generated export-token-<name>)."""
    ttl_expiration_time: str | None = None
    """When the export will be deleted (creation + ttlDuration)."""
    service_name: str | None = None
    """KubeVirt's export Service; kubevisor serves exports from the API server and leaves it empty."""
    virtual_machine_name: str | None = None
    """The VM the exported volumes belong to (VM and VM snapshot sources)."""
    conditions: list[Condition] | None = None
    """Ready and PVCReady."""


class VirtualMachineExport(KubeModel):
    """A request to offer a claim, a VM's claims or a VM snapshot's images for download."""

    api_version: str | None = API_VERSION
    """export.kubevirt.io/v1."""
    kind: str | None = "VirtualMachineExport"
    """VirtualMachineExport."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachineExportSpec
    """What to export."""
    status: VirtualMachineExportStatus | None = None
    """Observed state."""


# --- validation ----------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """A Go duration (``2h``, ``90s``, ``1h30m``) in seconds; ValueError if it is not one."""
    text = value.strip()
    if text == "0":
        return 0.0
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {value!r}: use e.g. 2h, 90s or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    if old is not None and old.get("spec") != spec:
        return [FieldError("spec", "spec is immutable after the export is created: create a new export")]
    errors: list[FieldError] = []
    source = spec.get("source")
    if isinstance(source, dict):
        kind = source.get("kind")
        group = source.get("apiGroup") or ""
        if kind not in SOURCE_KINDS:
            errors.append(
                FieldError(
                    "spec.source.kind",
                    f"invalid kind {kind!r}: export a PersistentVolumeClaim, VirtualMachineSnapshot or "
                    "VirtualMachine",
                    "FieldValueNotSupported",
                )
            )
        elif group != SOURCE_KINDS[kind]:
            want = SOURCE_KINDS[kind] or '"" (the core group)'
            errors.append(
                FieldError("spec.source.apiGroup", f"invalid apiGroup {group!r} for {kind}: use {want}")
            )
        if not source.get("name"):
            errors.append(FieldError("spec.source.name", "name the object to export", "FieldValueRequired"))
    ttl = spec.get("ttlDuration")
    if ttl is not None:
        try:
            seconds = parse_duration(str(ttl))
        except ValueError as e:
            errors.append(FieldError("spec.ttlDuration", str(e)))
        else:
            if seconds <= 0:
                errors.append(FieldError("spec.ttlDuration", f"{ttl!r} must be positive, e.g. 2h"))
    return errors


KINDS: list[Kind] = [
    Kind(
        GROUP,
        VERSION,
        "VirtualMachineExport",
        PLURAL,
        VirtualMachineExport,
        short_names=("vmexport", "vmexports"),
        categories=("all",),
        printer_columns=(
            PrinterColumn("SourceKind", json_path=".spec.source.kind"),
            PrinterColumn("SourceName", json_path=".spec.source.name"),
            PrinterColumn("Phase", json_path=".status.phase"),
        ),
        validator=_validate,
    ),
]
