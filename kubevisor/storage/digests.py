"""What an image tag points to right now: the registry poll behind a DataImportCron.

Why it exists: a DataImportCron imports a registry image again whenever its tag moves to a new manifest.
CDI learns the tag's current digest with a poller (``cdi-source-update-poller``, or its controller for
node pulls); kubevisor's DataImportCron controller asks here. Controllers reach registries only through
this library, never through the cluster store.

One request per poll: a ``HEAD`` of the manifest, read from ``Docker-Content-Digest`` (a ``GET`` and the
body's sha256 when a registry does not send it), after the registry's authentication challenge, exactly as
a node's pull resolves a tag (:func:`kubevisor.storage.registry.resolve_digest`: that module owns the
protocol, the transport rules for loopback, insecure and ``certConfigMap`` registries, and the errors;
this module adds no protocol of its own). A reference that already names a digest
(``repo@sha256:...``) is returned without asking anyone.

Errors are :mod:`kubevisor.storage.registry`'s: :class:`~kubevisor.storage.registry.InvalidReference`
(the reference cannot work), :class:`~kubevisor.storage.registry.ImageUnavailable` and its subclasses
(unknown tag, refused login, unreachable registry: try again at the next poll).
"""

from __future__ import annotations

import httpx

from kubevisor.storage import registry

__all__ = ["current_digest"]


async def current_digest(
    image: str,
    *,
    credentials: registry.Credentials | None = None,
    ca_bundle: str | None = None,
    insecure_registries: tuple[str, ...] = (),
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: float = 30.0,
) -> str:
    """The ``sha256:<hex>`` manifest digest ``image`` (``[docker://]host/repo[:tag][@digest]``) has now.

    ``credentials``: the login of the template's ``secretRef``; ``ca_bundle``: the PEM CAs of its
    ``certConfigMap`` (the registry is then spoken to over HTTPS, even on loopback);
    ``insecure_registries``: ``HOST[:PORT]`` polled over plain HTTP (``kubevisor up --insecure-registry``)."""
    return await registry.resolve_digest(
        image,
        credentials=credentials,
        ca_bundle=ca_bundle,
        insecure_registries=insecure_registries,
        transport=transport,
        timeout=timeout,
    )
