"""The node agent: the only component that touches a node (ARCHITECTURE "Processes").

It registers its Node and renews the node's Lease (:mod:`~.node`), and runs the VirtualMachineInstances
bound to the node (:mod:`~.vmis`: a reconciler over VMIs selected by ``status.nodeName``), turning a VMI's
spec into prepared disks (:mod:`~.preparing`) and a :class:`~kubevisor.virt.domain.Domain`
(:mod:`~.converting`) that the QEMU driver (:mod:`kubevisor.virt`) runs. :mod:`~.running` assembles it.

It reaches the cluster only through :mod:`kubevisor.client` (import-linter contract), and the host through
:mod:`kubevisor.virt` and :mod:`kubevisor.network`.
"""
