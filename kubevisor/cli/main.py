"""The ``kubevisor`` command.

``up`` runs the single-node platform in the foreground until SIGINT or SIGTERM. The CLI is a thin layer:
the platform is assembled in :mod:`kubevisor.platform`; cluster operations go through
:mod:`kubevisor.client`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubevisor.agent.running import AgentConfig
    from kubevisor.virt.probe import ProbeGuest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubevisor", description="VMs and containers behind a Kubernetes API"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the single-node platform in the foreground")
    up.add_argument("--data-dir", default="/var/lib/kubevisor", type=Path, help="state directory")
    up.add_argument("--listen", default="127.0.0.1:6443", help="HOST:PORT of the API server")
    up.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    up.add_argument(
        "--no-controllers", action="store_true", help="run only the API server (controllers run elsewhere)"
    )
    up.add_argument("--no-agent", action="store_true", help="run no node agent (VMs are scheduled, not run)")
    up.add_argument("--node-name", default=None, help="name of this node (default: the host name)")
    up.add_argument(
        "--accel",
        default="auto",
        choices=["auto", "kvm", "tcg"],
        help="run guests under KVM or TCG; auto: KVM only if a probe guest boots under it (cached per boot)",
    )
    up.add_argument(
        "--image-mirror",
        action="append",
        default=[],
        metavar="IMAGE=FILE",
        help="serve containerDisk IMAGE from the local image FILE instead of pulling it (repeatable)",
    )
    up.add_argument(
        "--image-dir",
        action="append",
        default=[],
        type=Path,
        help="let containerDisks name image files under DIR by path (repeatable; DATA/images always)",
    )
    up.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="pull containerDisks and poll DataImportCron sources from this registry over plain HTTP "
        "(repeatable; loopback ones always are)",
    )
    up.add_argument(
        "--host-disk-dir",
        action="append",
        default=[],
        type=Path,
        help="let hostDisk volumes use files under DIR (repeatable; without it hostDisk is refused)",
    )
    up.add_argument(
        "--volume-dir",
        action="append",
        default=[],
        type=Path,
        help="let PersistentVolumes (hostPath, local) name disk images under DIR (repeatable; DATA/volumes "
        "always)",
    )
    up.add_argument(
        "--pod-network",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put VMs on the node's pod network: bridge kv0, DHCP, nftables NAT (default: on when running "
        "as root with ip and nft installed; --no-pod-network gives each VM QEMU's user-mode network)",
    )
    up.add_argument("--pod-cidr", default=None, help="this node's pod addresses (default: 10.244.0.0/24)")
    up.add_argument(
        "--demo",
        default=None,
        type=Path,
        metavar="FILE",
        help="once up, create the objects in the manifest FILE (e.g. examples/demo-vm.yaml; existing ones "
        "are left alone) and print how to reach its VMs",
    )
    up.add_argument(
        "--network-namespace",
        default=None,
        metavar="NETNS",
        help="run the pod network inside the network namespace NETNS (made with `ip netns add`; "
        "default: the host's)",
    )
    for verb in ("start", "stop", "restart"):
        cmd = sub.add_parser(verb, help=f"{verb} a VirtualMachine (through subresources.kubevirt.io)")
        cmd.add_argument("name", help="VirtualMachine name")
        cmd.add_argument("-n", "--namespace", default="default")
        cmd.add_argument(
            "--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)"
        )
    from kubevisor.cli import volumes

    volumes.add_parsers(sub)
    from kubevisor.cli import streams, uploading

    streams.add_parsers(sub)
    uploading.add_parser(sub)
    from kubevisor.cli import vmexport

    vmexport.add_parser(sub)
    return parser


def _kubeconfig(explicit: str | None) -> str:
    if explicit:
        return explicit
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if env:
        return env
    home = Path.home() / ".kube" / "config"
    return str(home if home.exists() else Path("/var/lib/kubevisor/kubeconfig"))


async def _vm_action(args: argparse.Namespace) -> int:
    from kubevisor.client import ApiError, Client

    vm = f"namespaces/{args.namespace}/virtualmachines/{args.name}"
    path = f"/apis/subresources.kubevirt.io/v1/{vm}/{args.command}"
    async with Client.from_kubeconfig(_kubeconfig(args.kubeconfig)) as client:
        try:
            await client.request("PUT", path)
        except ApiError as exc:
            print(
                f"Error {args.command}ing VirtualMachine {args.namespace}/{args.name}: {exc}", file=sys.stderr
            )
            return 1
    print(f"VM {args.name} was scheduled to {args.command}")
    return 0


def _agent_config(args: argparse.Namespace) -> AgentConfig:
    from kubevisor.agent.running import AgentConfig

    mirror = {}
    for entry in args.image_mirror:
        image, sep, path = entry.partition("=")
        if not sep or not image or not path:
            raise ValueError(f"--image-mirror {entry!r}: expected IMAGE=FILE")
        mirror[image] = Path(path).resolve()
    config = AgentConfig(
        data_dir=Path(args.data_dir).resolve(),
        image_mirror=mirror,
        image_dirs=tuple(p.resolve() for p in args.image_dir),
        insecure_registries=tuple(args.insecure_registry),
        host_disk_dirs=tuple(p.resolve() for p in args.host_disk_dir),
        volume_dirs=tuple(p.resolve() for p in args.volume_dir),
    )
    if args.node_name:
        config = dataclasses.replace(config, node_name=args.node_name)
    config = dataclasses.replace(config, accel=args.accel, probe_guest=_probe_guest(args))
    return dataclasses.replace(config, **_pod_network_settings(args))


def _probe_guest(args: argparse.Namespace) -> ProbeGuest | None:
    """The guest that proves KVM works (``--accel auto`` with a usable ``/dev/kvm``): the test guest's
    kernel and initramfs, built from Debian packages and cached. None (TCG) when it cannot be built."""
    from kubevisor.virt import probe

    if args.accel != "auto" or args.no_agent or not probe.kvm_device_usable():
        return None
    from kubevisor.testing import guest

    try:
        built = guest.build()
    except guest.GuestBuildError as exc:
        logging.getLogger(__name__).warning("no KVM probe guest (%s); guests run under TCG", exc)
        return None
    return probe.ProbeGuest(built.kernel, built.initrd, guest.KERNEL_CMDLINE, guest.READY_MARKER)


def _pod_network_settings(args: argparse.Namespace) -> dict[str, Any]:
    from ipaddress import IPv4Network

    from kubevisor.agent import networking

    enabled = args.pod_network
    if enabled is None:
        enabled = networking.host_supports_pod_network()
    settings: dict[str, Any] = {"pod_network": enabled, "network_namespace": args.network_namespace}
    if args.pod_cidr:
        try:
            settings["pod_cidr"] = IPv4Network(args.pod_cidr)
        except ValueError as exc:
            raise ValueError(f"--pod-cidr {args.pod_cidr!r}: {exc} (e.g. 10.244.0.0/24)") from exc
    return settings


async def _up(args: argparse.Namespace) -> int:
    from kubevisor import platform

    try:
        plat = platform.Platform(
            args.data_dir,
            args.listen,
            controllers=not args.no_controllers,
            agent=not args.no_agent,
            agent_config=_agent_config(args),
            insecure_registries=tuple(args.insecure_registry),
        )
    except ValueError as exc:
        print(f"kubevisor up: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plat.start()
    except OSError as exc:
        print(f"kubevisor up: cannot start: {exc}", file=sys.stderr)
        await plat.stop()
        return 1
    print(f"kubevisor is up: API server {plat.url}", flush=True)
    if args.demo is None:
        print(f"  export KUBECONFIG={plat.kubeconfig}", flush=True)
    else:
        from kubevisor.cli import demo

        try:
            objects = demo.load(args.demo)
            applied = await demo.apply(plat.kubeconfig, objects)
        except Exception as exc:  # the platform stays up: the user can fix the manifest and apply it
            print(f"kubevisor up: --demo {args.demo}: {exc}", file=sys.stderr, flush=True)
        else:
            print(f"demo: created {', '.join(applied)} from {args.demo}; next:", flush=True)
            print(demo.instructions(plat.kubeconfig, objects), flush=True)
    await stop.wait()
    print("kubevisor: shutting down", flush=True)
    await plat.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "warning").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "up":
        return asyncio.run(_up(args))
    if args.command in ("start", "stop", "restart"):
        return asyncio.run(_vm_action(args))
    if args.command in ("addvolume", "removevolume"):
        from kubevisor.cli import volumes

        return volumes.run(args, _kubeconfig(args.kubeconfig))
    from kubevisor.cli import streams

    if args.command in streams.COMMANDS:
        return streams.run(args, _kubeconfig(args.kubeconfig))
    if args.command == "image-upload":
        from kubevisor.cli import uploading

        return uploading.run(args, _kubeconfig(args.kubeconfig))
    if args.command == "vmexport":
        from kubevisor.cli import vmexport

        return vmexport.run(args, _kubeconfig(args.kubeconfig))
    return 2


if __name__ == "__main__":
    sys.exit(main())
