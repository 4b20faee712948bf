"""``kubevisor addvolume``/``removevolume``: the options they parse and the bodies they send (virtctl's)."""

from __future__ import annotations

import argparse

from kubevisor.cli import volumes


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    volumes.add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_addvolume_body_names_the_claim_and_a_scsi_disk() -> None:
    args = parse("addvolume", "vm1", "--volume-name=data", "--serial", "S1")
    assert not args.persist
    assert volumes.request_body(args, data_volume=False) == {
        "name": "data",
        "disk": {"name": "data", "disk": {"bus": "scsi"}, "serial": "S1"},
        "volumeSource": {"persistentVolumeClaim": {"claimName": "data", "hotpluggable": True}},
    }


def test_addvolume_of_a_data_volume_on_virtio_dry_run() -> None:
    args = parse("addvolume", "vm1", "--volume-name=dv", "--bus=virtio", "--persist", "--dry-run")
    body = volumes.request_body(args, data_volume=True)
    assert body["volumeSource"] == {"dataVolume": {"name": "dv", "hotpluggable": True}}
    assert body["disk"]["disk"] == {"bus": "virtio"}
    assert body["dryRun"] == ["All"] and args.persist


def test_removevolume_body_is_just_the_name() -> None:
    args = parse("removevolume", "vm1", "--volume-name=data", "--persist")
    assert volumes.request_body(args, data_volume=False) == {"name": "data"}
