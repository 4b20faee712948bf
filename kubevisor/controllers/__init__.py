"""Level-based reconcilers and the manager that runs them under leader election.

- :mod:`~kubevisor.controllers.reconciling`: the :class:`Controller` base, :class:`Result`,
  :class:`TemporaryError`, :class:`PermanentError`
- :mod:`~kubevisor.controllers.garbagecollector`: owner references and deletion propagation
- :mod:`~kubevisor.controllers.namespace`: emptying and finalizing terminating namespaces
- :mod:`~kubevisor.controllers.manager`: :class:`ControllerManager`, :func:`start_builtin_controllers`

Controllers reach the cluster only through :mod:`kubevisor.client`.
"""

from kubevisor.controllers.garbagecollector import GarbageCollector
from kubevisor.controllers.manager import ControllerManager, builtin_controllers, start_builtin_controllers
from kubevisor.controllers.namespace import NamespaceController
from kubevisor.controllers.reconciling import Controller, PermanentError, Result, TemporaryError

__all__ = [
    "Controller",
    "ControllerManager",
    "GarbageCollector",
    "NamespaceController",
    "PermanentError",
    "Result",
    "TemporaryError",
    "builtin_controllers",
    "start_builtin_controllers",
]
