"""Finding a volume's block node in QEMU's ``query-block`` answer (for blockdev-backup)."""

from __future__ import annotations

import pytest

from kubevisor.agent.snapshots import SnapshotError, block_node

BLOCKS = [
    {
        "device": "",
        "qdev": "/machine/peripheral/ua-rootdisk/virtio-backend",
        "inserted": {"node-name": "drive-0"},
    },
    {
        "device": "",
        "qdev": "/machine/peripheral/ua-data/virtio-backend",
        "inserted": {"node-name": "drive-1", "image": {"virtual-size": 67108864}},
    },
    {"device": "", "qdev": "/machine/peripheral/ua-data2", "inserted": {"node-name": "drive-2"}},
]


def test_the_node_of_a_volume_is_found_by_its_device() -> None:
    assert block_node(BLOCKS, "data", "default/vm") == ("drive-1", 67108864)
    assert block_node(BLOCKS, "data2", "default/vm") == ("drive-2", 0)  # not confused with "data"


def test_a_volume_without_a_disk_is_an_error() -> None:
    with pytest.raises(SnapshotError, match="no disk of volume cache"):
        block_node(BLOCKS, "cache", "default/vm")
