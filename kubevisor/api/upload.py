"""upload.cdi.kubevirt.io/v1beta1 UploadTokenRequest, and the annotations an upload target carries.

CDI serves this kind from its aggregated apiserver (``CDI:pkg/apiserver``): a POST with ``spec.pvcName``
answers with the same object and ``status.token``, a short-lived token that lets its bearer upload into
that one claim through the upload proxy. It is a virtual kind: nothing is stored. RBAC: ``create`` on
``uploadtokenrequests`` in the claim's namespace (``CDI:pkg/apiserver/apiserver.go``).

A claim is an upload target when it carries :data:`UPLOAD_TARGET` (CDI's annotation name,
``CDI:pkg/controller/common/util.go``); the node agent that receives the upload reports on the claim with
the annotations an import uses (:data:`kubevisor.api.cdi.POD_PHASE_ANNOTATION`, ...), as CDI's upload
server pod does through its pod phase.
"""

from __future__ import annotations

from pydantic import Field

from kubevisor.api.base import KubeModel
from kubevisor.api.meta import ObjectMeta
from kubevisor.api.registry import Kind

GROUP = "upload.cdi.kubevirt.io"
VERSION = "v1beta1"

UPLOAD_TARGET = "cdi.kubevirt.io/storage.upload.target"
"""On a PersistentVolumeClaim: it receives an upload (any value; CDI writes ``""``)."""


class UploadTokenRequestSpec(KubeModel):
    """The claim to upload into."""

    pvc_name: str = ""
    """Name of the PersistentVolumeClaim (in the request's namespace)."""


class UploadTokenRequestStatus(KubeModel):
    """The issued token."""

    token: str | None = None
    """Bearer token for the upload proxy (``Authorization: Bearer <token>``); valid for 5 minutes."""


class UploadTokenRequest(KubeModel):
    """Asks for a token to upload an image into a claim (``virtctl image-upload``)."""

    api_version: str | None = f"{GROUP}/{VERSION}"
    """upload.cdi.kubevirt.io/v1beta1."""
    kind: str | None = "UploadTokenRequest"
    """UploadTokenRequest."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: UploadTokenRequestSpec = Field(default_factory=UploadTokenRequestSpec)
    """Which claim."""
    status: UploadTokenRequestStatus | None = None
    """The token (filled by the server)."""


KINDS: list[Kind] = [
    Kind(
        GROUP,
        VERSION,
        "UploadTokenRequest",
        "uploadtokenrequests",
        UploadTokenRequest,
        stored=False,
        verbs=("create",),
    ),
]
