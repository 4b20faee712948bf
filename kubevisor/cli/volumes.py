"""``kubevisor addvolume VMI --volume-name=NAME`` and ``kubevisor removevolume VMI --volume-name=NAME``:
disk hotplug, as virtctl does it.

``--volume-name`` names the DataVolume or PersistentVolumeClaim to attach (a DataVolume of that name wins,
as in virtctl), and the volume and disk in the VMI get that name too. Without ``--persist`` the request
goes to the VMI's ``addvolume`` subresource (the disk is gone when the VMI stops); with it, to its
VirtualMachine's, which also writes the volume into the VM's spec. The apiserver only records the request;
the VMI's node agent attaches the disk, and ``status.volumeStatus`` shows when it is ``Ready``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

__all__ = ["COMMANDS", "add_parsers", "request_body", "run"]

COMMANDS = ("addvolume", "removevolume")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, what in (
        ("addvolume", "attach a claim to"),
        ("removevolume", "detach a hotplugged volume from"),
    ):
        cmd = sub.add_parser(verb, help=f"{what} a running VirtualMachineInstance (disk hotplug)")
        cmd.add_argument("name", help="VirtualMachineInstance (and, with --persist, VirtualMachine) name")
        cmd.add_argument(
            "--volume-name", required=True, help="the DataVolume or PersistentVolumeClaim (and volume) name"
        )
        cmd.add_argument(
            "--persist",
            action="store_true",
            help="also change the VirtualMachine's spec (kept across restarts)",
        )
        cmd.add_argument("--dry-run", action="store_true", help="validate the request, change nothing")
        if verb == "addvolume":
            cmd.add_argument("--serial", default=None, help="serial number the guest sees")
            cmd.add_argument(
                "--bus", default="scsi", choices=["scsi", "virtio"], help="disk bus (default scsi)"
            )
            cmd.add_argument("--cache", default=None, choices=["none", "writethrough", "writeback"])
        cmd.add_argument("-n", "--namespace", default="default")
        cmd.add_argument(
            "--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)"
        )


def request_body(args: argparse.Namespace, *, data_volume: bool) -> dict[str, Any]:
    """The AddVolumeOptions or RemoveVolumeOptions body of the command."""
    body: dict[str, Any] = {"name": args.volume_name}
    if args.dry_run:
        body["dryRun"] = ["All"]
    if args.command == "removevolume":
        return body
    disk: dict[str, Any] = {"name": args.volume_name, "disk": {"bus": args.bus}}
    if args.serial:
        disk["serial"] = args.serial
    if args.cache:
        disk["cache"] = args.cache
    if data_volume:
        source: dict[str, Any] = {"dataVolume": {"name": args.volume_name, "hotpluggable": True}}
    else:
        source = {"persistentVolumeClaim": {"claimName": args.volume_name, "hotpluggable": True}}
    return body | {"disk": disk, "volumeSource": source}


async def _is_data_volume(client: Any, namespace: str, name: str) -> bool:
    from kubevisor.client import NotFoundError

    path = f"/apis/cdi.kubevirt.io/v1beta1/namespaces/{namespace}/datavolumes/{name}"
    try:
        await client.request("GET", path)
    except NotFoundError:
        return False
    return True


async def _run(args: argparse.Namespace, kubeconfig: str) -> int:
    from kubevisor.client import Client

    plural = "virtualmachines" if args.persist else "virtualmachineinstances"
    path = (
        f"/apis/subresources.kubevirt.io/v1/namespaces/{args.namespace}/{plural}/{args.name}/{args.command}"
    )
    async with Client.from_kubeconfig(kubeconfig) as client:
        data_volume = args.command == "addvolume" and await _is_data_volume(
            client, args.namespace, args.volume_name
        )
        await client.request("PUT", path, body=request_body(args, data_volume=data_volume))
    what = "VM" if args.persist else "VMI"
    action = "add" if args.command == "addvolume" else "remove"
    print(
        f"Successfully submitted {action} volume request to {what} {args.name} for volume {args.volume_name}"
    )
    return 0


def run(args: argparse.Namespace, kubeconfig: str) -> int:
    """Run ``addvolume`` or ``removevolume``; the exit code."""
    from kubevisor.client import ClientError, KubeconfigError

    try:
        return asyncio.run(_run(args, kubeconfig))
    except (ClientError, KubeconfigError, OSError) as exc:
        print(f"kubevisor {args.command}: {exc}", file=sys.stderr)
        return 1
