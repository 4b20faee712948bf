"""``kubevisor vmexport``: argument parsing (virtctl's flags) and the download verifier."""

from __future__ import annotations

import gzip
import hashlib
import os

import pytest

from kubevisor.cli import main, vmexport


def parse(*argv: str) -> object:
    return main._parser().parse_args(["vmexport", *argv])


def test_virtctl_flags() -> None:
    args = parse("download", "e", "--vm", "vm1", "--output", "x.img", "--keep-vme", "--insecure")
    assert vmexport._source(args) == {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"}  # type: ignore[arg-type]
    assert args.format == "gzip" and args.keep_vme and args.insecure  # type: ignore[attr-defined]
    created = parse("create", "e", "--pvc", "data", "--ttl", "1h")
    assert vmexport._source(created) == {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "data"}  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        parse("create", "e")  # a source is required
    with pytest.raises(SystemExit):
        parse("create", "e", "--pvc", "a", "--vm", "b")  # only one


def test_verifier_hashes_the_decompressed_disk() -> None:
    disk = os.urandom(100_000) + bytes(200_000)
    packed = gzip.compress(disk)
    verifier = vmexport._Verifier(gzipped=True)
    for i in range(0, len(packed), 4096):
        verifier.feed(packed[i : i + 4096])
    verifier.finish()
    assert verifier.size == len(disk)
    assert verifier.digest.hexdigest() == hashlib.sha256(disk).hexdigest()


def test_verifier_refuses_a_cut_gzip_stream() -> None:
    packed = gzip.compress(os.urandom(100_000))
    verifier = vmexport._Verifier(gzipped=True)
    verifier.feed(packed[: len(packed) // 2])
    with pytest.raises(vmexport.ExportFailed, match="ended early"):
        verifier.finish()
