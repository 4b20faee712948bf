"""The host side of the pod network: a bridge per node with IPAM for pod addresses, the bridge and
masquerade interface bindings of VMs (tap devices, DHCP, nftables NAT), and port forwarding to guests.

A host-side library, as :mod:`kubevisor.virt` and :mod:`kubevisor.storage` are: it never talks to the API
server (import-linter enforces it); the node agent calls it and writes what it returns into the VMI's
status. Every operation can be aimed at a network namespace (``NodeNetwork.netns``), which is how each
node of a multi-node test, and every test of this package, gets a network of its own.

Modules: :mod:`~.ipam` (addresses), :mod:`~.podnet` (bridge, nftables table, taps), :mod:`~.bindings`
(bridge/masquerade per VM interface), :mod:`~.dhcp` (static-lease DHCP server), :mod:`~.portforward`,
and one module per host tool: :mod:`~.ip` (iproute2) and :mod:`~.nft` (nftables, JSON batches), plus
:mod:`~.netns` (running code inside a namespace). Errors: :mod:`~.errors`.
"""
