"""Import benchmark: ``importing.import_image`` beside the shell pipeline that does the same work.

A disk image of ``--size`` MiB (default 1024) made once in a temporary directory, mostly non-zero data
(see :func:`make_unit`; one zero MiB in 16), served by an HTTP server in its own process on 127.0.0.1
(``sendfile``). For each format the import and its natural
baseline fetch the same URL into the same directory:

- raw:   ``curl -s -o disk.img URL`` (raw needs no conversion)
- qcow2: ``curl -s -o tmp URL && qemu-img convert -f qcow2 -O raw tmp disk.img``
- xz:    ``curl -s URL | xz -d > disk.img``
- gz:    ``curl -s URL | gzip -d > disk.img`` (with ``--formats raw,qcow2,xz,gz``)

Each line prints the best of ``--repeat`` runs as MB/s of image (virtual) size for both, the ratio
(import / baseline; above 1 the import is faster), and the CPU seconds each took (user + system, all
processes and threads): on a shared machine the CPU figures are the steadier comparison. ``--fsync``
makes the import durable (its default outside benchmarks) and adds ``sync FILE`` to the baselines. Usage:
``python bench/import_bench.py [--size MiB] [--repeat N] [--formats raw,qcow2,xz] [--fsync]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.server
import lzma
import os
import random
import resource
import shutil
import socketserver
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubevisor.storage import importing  # noqa: E402

MiB = 1 << 20


# ------------------------------------------------------------------------------------ image server


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = Path(".")

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        with path.open("rb") as f:
            self.send_response(200)
            self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            self.end_headers()
            self.wfile.flush()
            self.connection.sendfile(f)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def serve(root: Path) -> None:
    """Run in a child process: serve ``root``, print the port, run until killed."""
    _Handler.root = root
    server = _Server(("127.0.0.1", 0), _Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


# ------------------------------------------------------------------------------------------ images


UNIT = 16 * MiB


def make_unit() -> bytes:
    """16 MiB of disk-like data: a boot sector and a zero run in the first MiB, then per MiB either random
    bytes (1 in 4) or text-like data (random words: compresses about 3:1)."""
    words = [os.urandom(n).hex().encode() for n in (2, 3, 4, 5, 6, 8) for _ in range(700)]
    rng = random.Random(7)
    text = b" ".join(rng.choice(words) for _ in range(200_000))
    parts = [bytes(446) + os.urandom(66) + bytes(MiB - 512)]
    for i in range(1, UNIT // MiB):
        if i % 4 == 1:
            parts.append(os.urandom(MiB))
        else:
            start = rng.randrange(len(text) - MiB)
            parts.append(text[start : start + MiB])
    return b"".join(parts)


def make_images(directory: Path, size: int, formats: list[str]) -> None:
    """The raw image repeats one 16 MiB unit (different each run); compressed images are the unit's
    compressed form repeated (concatenated xz streams, gzip members), which every decoder must decode
    in full: making a 1 GiB xz file properly takes minutes on a 2-core machine."""
    unit = make_unit()
    count = max(size // UNIT, 1)
    raw = directory / "disk.raw"
    with raw.open("wb") as f:
        for _ in range(count):
            f.write(unit)
    if "qcow2" in formats:
        argv = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(directory / "disk.qcow2")]
        subprocess.run(argv, check=True)
    for fmt in ("xz", "gz"):
        if fmt in formats:
            packed = lzma.compress(unit, preset=1) if fmt == "xz" else gzip.compress(unit, 1)
            with (directory / FILES[fmt]).open("wb") as f:
                for _ in range(count):
                    f.write(packed)


FILES = {"raw": "disk.raw", "qcow2": "disk.qcow2", "xz": "disk.raw.xz", "gz": "disk.raw.gz"}


def baseline(fmt: str, url: str, out: Path, fsync: bool) -> None:
    sync = f" && sync {out}" if fsync else ""
    if fmt == "raw":
        script = f"curl -sf -o {out} {url}{sync}"
    elif fmt == "qcow2":
        tmp = out.with_name("download.tmp")
        script = f"curl -sf -o {tmp} {url} && qemu-img convert -f qcow2 -O raw {tmp} {out}{sync}; rm -f {tmp}"
    elif fmt == "xz":
        script = f"set -o pipefail; curl -sf {url} | xz -d > {out}{sync}"
    else:
        script = f"set -o pipefail; curl -sf {url} | gzip -d > {out}{sync}"
    subprocess.run(["bash", "-c", script], check=True)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_import(url: str, out: Path, fsync: bool) -> importing.ImportResult:
    return asyncio.run(importing.import_image(importing.HTTPSource(url), out, fsync=fsync))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="image size in MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the best counts")
    parser.add_argument("--formats", default="raw,qcow2,xz")
    parser.add_argument("--fsync", action="store_true", help="durable imports, and sync after baselines")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    formats = [f for f in args.formats.split(",") if f]
    size = max(args.size * MiB // UNIT, 1) * UNIT
    with tempfile.TemporaryDirectory(prefix="import-bench-") as tmp:
        work = Path(tmp)
        images, out_dir = work / "images", work / "out"
        images.mkdir()
        out_dir.mkdir()
        started = time.monotonic()
        make_images(images, size, formats)
        print(f"images of {args.size} MiB made in {time.monotonic() - started:.1f} s: ", end="")
        print(", ".join(f"{f} {(images / FILES[f]).stat().st_size / MiB:.0f} MiB" for f in formats))
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(images)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            header = f"{'format':8} {'import MB/s':>12} {'baseline MB/s':>14} {'ratio':>6} {'CPU s':>12}"
            print(header + "   baseline")
            for fmt in formats:
                url = f"http://127.0.0.1:{port}/{FILES[fmt]}"
                out = out_dir / importing.DISK_IMAGE
                best_import = best_base = cpu_import = cpu_base = float("inf")
                for _ in range(args.repeat):
                    t, c = time.perf_counter(), cpu_seconds()
                    baseline(fmt, url, out, args.fsync)
                    best_base = min(best_base, time.perf_counter() - t)
                    cpu_base = min(cpu_base, cpu_seconds() - c)
                    check = out.stat().st_size
                    out.unlink()
                    t, c = time.perf_counter(), cpu_seconds()
                    result = run_import(url, out, args.fsync)
                    best_import = min(best_import, time.perf_counter() - t)
                    cpu_import = min(cpu_import, cpu_seconds() - c)
                    assert result.size == check == size, (result, check)
                    out.unlink()
                mbs_import, mbs_base = size / best_import / 1e6, size / best_base / 1e6
                what = {"raw": "curl -o", "qcow2": "curl -o && qemu-img convert", "xz": "curl | xz -d"}
                print(
                    f"{fmt:8} {mbs_import:12.0f} {mbs_base:14.0f} {mbs_import / mbs_base:6.2f} "
                    f"{cpu_import:5.1f} vs {cpu_base:4.1f}   "
                    f"{what.get(fmt, 'curl | gzip -d')}",
                    flush=True,
                )
        finally:
            server.kill()
            server.wait()
            shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
