"""The namespace controller: empties a namespace being deleted, then lets the apiserver remove it.

Deleting a Namespace only marks it (``deletionTimestamp``, phase ``Terminating``); the apiserver refuses new
objects in it from then on. The Namespace keeps ``spec.finalizers: [kubernetes]`` until this controller has
deleted everything in it:

1. For every stored, namespaced kind in the registry, list the namespace's objects and delete those not
   yet being deleted (Background propagation; the garbage collector handles their dependents).
2. While anything remains (objects waiting for their own finalizers), look again after
   ``recheck_interval`` seconds. A finalizer nobody removes keeps the namespace Terminating, as in
   Kubernetes.
3. When every list comes back empty, PUT the Namespace to its ``finalize`` subresource without
   ``kubernetes`` in ``spec.finalizers``, carrying the resourceVersion read (409 requeues). With no
   finalizers left the apiserver removes the Namespace.

Deletes carry a uid precondition, so an object re-created under the same name by someone else is not
deleted by a decision made about its predecessor.
"""

from __future__ import annotations

import copy
import logging

from kubevisor.api.registry import Kind, Registry
from kubevisor.client import errors
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result

log = logging.getLogger(__name__)

FINALIZER = "kubernetes"


def namespaced_content(kind: Kind) -> bool:
    """Kinds whose objects live in a namespace and must go before it does."""
    return kind.stored and kind.namespaced and "list" in kind.verbs and "delete" in kind.verbs


class NamespaceController(Controller):
    """Deletes the contents of terminating namespaces and finalizes them."""

    name = "namespace"
    concurrency = 2

    def __init__(
        self,
        client: Client,
        registry: Registry | None = None,
        *,
        concurrency: int | None = None,
        recheck_interval: float = 1.0,
    ) -> None:
        super().__init__(client, concurrency=concurrency)
        self.registry = registry or client.registry
        self.recheck_interval = recheck_interval
        self.namespaces: ResourceClient = client.resource("v1", "namespaces")
        self._informer: Informer | None = None

    def setup(self) -> None:
        self._informer = self.watch(self.namespaces)

    async def reconcile(self, key: str) -> Result | None:
        assert self._informer is not None
        namespace = self._informer.get(key)
        if namespace is None or not (namespace.get("metadata") or {}).get("deletionTimestamp"):
            return None
        finalizers = list((namespace.get("spec") or {}).get("finalizers") or [])
        if FINALIZER not in finalizers:
            return None
        remaining = await self._delete_content(key)
        if remaining:
            log.info("%r: namespace %s: waiting for %d objects to go", self, key, remaining)
            return Result(requeue_after=self.recheck_interval)
        body = copy.deepcopy(namespace)
        body.setdefault("spec", {})["finalizers"] = [f for f in finalizers if f != FINALIZER]
        log.info("%r: namespace %s is empty; finalizing", self, key)
        try:
            await self.namespaces.update(body, subresource="finalize")
        except errors.NotFoundError:
            pass
        return None

    async def _delete_content(self, namespace: str) -> int:
        """Delete what is in ``namespace``; the number of objects that still exist afterwards."""
        remaining = 0
        for kind in self.registry.kinds():
            if not namespaced_content(kind):
                continue
            resources = self.client.resource(kind)
            try:
                listed = await resources.list_all(namespace)
            except errors.NotFoundError:
                log.warning("%r: the server does not serve %s; skipping it", self, kind.resource_group)
                continue
            for obj in listed:
                meta = obj.get("metadata") or {}
                if meta.get("deletionTimestamp"):
                    remaining += 1
                    continue
                try:
                    result = await resources.delete(
                        meta["name"],
                        namespace,
                        propagation_policy="Background",
                        preconditions={"uid": meta["uid"]},
                    )
                except (errors.NotFoundError, errors.ConflictError):
                    continue  # gone already, or a namesake: the next pass lists it again
                if result.get("kind") != "Status" and (result.get("metadata") or {}).get("deletionTimestamp"):
                    remaining += 1  # held by finalizers
        return remaining
