"""Child process of the crash test: writes as fast as it can and prints every acknowledged write.

Usage: ``python crash_writer.py DB PREFIX``. For each key ``PREFIX000000``, ``PREFIX000001``, ... it creates
the key, then updates it once, and right after each write returns prints ``key revision version`` and
flushes. It never stops by itself: the test kills it with SIGKILL in the middle of the burst.
"""

from __future__ import annotations

import asyncio
import sys
import zlib

from kubevisor.store.sqlite import SQLiteStore


def value_for(key: str, version: int) -> bytes:
    """A value the parent can recompute; sizes vary up to ~12 KB so some values span overflow pages."""
    unit = f"{key}@{version};".encode()
    return unit * (1 + zlib.crc32(unit) % 500)


async def write_forever(path: str, prefix: str) -> None:
    store = await SQLiteStore.open(path)
    out = sys.stdout
    i = 0
    while True:
        key = f"{prefix}{i:06d}"
        kv = await store.create(key, value_for(key, 0))
        out.write(f"{key} {kv.mod_revision} 0\n")
        out.flush()
        kv = await store.update(key, value_for(key, 1), kv.mod_revision)
        out.write(f"{key} {kv.mod_revision} 1\n")
        out.flush()
        i += 1


if __name__ == "__main__":
    asyncio.run(write_forever(sys.argv[1], sys.argv[2]))
