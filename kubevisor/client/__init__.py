"""The async client every other component reaches the cluster through.

Controllers, the node agent and the CLI may import :mod:`kubevisor.api` and this package, never the store
or the apiserver (import-linter contracts). Modules are named for what they do; the names below are the
public surface::

    from kubevisor.client import Client, Informer, WorkQueue

    async with Client.from_kubeconfig(path) as client:
        configmaps = client.resource("v1", "configmaps")
        await configmaps.create({"metadata": {"name": "a"}, "data": {"k": "v"}}, "default")

- :mod:`~kubevisor.client.requesting`: :class:`Client`, :class:`ResourceClient`, :class:`ObjectList`
- :mod:`~kubevisor.client.watching`: :class:`Watch`, :class:`WatchEvent` (watch stream parsing)
- :mod:`~kubevisor.client.errors`: the :class:`ApiError` tree, one class per Status reason
- :mod:`~kubevisor.client.kubeconfig`: :class:`Config` from a kubeconfig file, TLS context
- :mod:`~kubevisor.client.informers`: :class:`Informer` (list+watch cache with handlers),
  :class:`SharedInformers` (one informer per kind and selectors for a whole process)
- :mod:`~kubevisor.client.queueing`: :class:`WorkQueue`, :func:`run_workers`
- :mod:`~kubevisor.client.leaderelection`: :class:`LeaderElector` on a Lease
- :mod:`~kubevisor.client.events`: :class:`EventRecorder`
- :mod:`~kubevisor.client.timestamps`: Kubernetes ``Time``/``MicroTime`` formatting
- :mod:`~kubevisor.client.sending`: cancellation-safe request sending (works around an httpcore leak)
"""

from kubevisor.client.errors import (
    AlreadyExistsError,
    ApiError,
    BadRequestError,
    ClientError,
    ConflictError,
    ForbiddenError,
    GoneError,
    InvalidError,
    MethodNotAllowedError,
    NotFoundError,
    ProtocolError,
    ServerError,
    TooManyRequestsError,
    TransportError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer, SharedInformers, object_key, split_key
from kubevisor.client.kubeconfig import Config, KubeconfigError
from kubevisor.client.leaderelection import LeaderElector, LeadershipLost
from kubevisor.client.queueing import ExponentialBackoff, QueueShutDown, WorkQueue, run_workers
from kubevisor.client.requesting import Client, ObjectList, ResourceClient
from kubevisor.client.watching import Watch, WatchEvent

__all__ = [
    "AlreadyExistsError",
    "ApiError",
    "BadRequestError",
    "Client",
    "ClientError",
    "Config",
    "ConflictError",
    "EventRecorder",
    "ExponentialBackoff",
    "ForbiddenError",
    "GoneError",
    "Informer",
    "InvalidError",
    "KubeconfigError",
    "LeaderElector",
    "LeadershipLost",
    "MethodNotAllowedError",
    "NotFoundError",
    "ObjectList",
    "ProtocolError",
    "QueueShutDown",
    "ResourceClient",
    "ServerError",
    "SharedInformers",
    "TooManyRequestsError",
    "TransportError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "Watch",
    "WatchEvent",
    "WorkQueue",
    "object_key",
    "run_workers",
    "split_key",
]
