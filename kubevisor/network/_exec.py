"""Running a host tool from an argument list: the one place this package starts processes.

Never a shell: the argument list goes to ``execve`` as is, so names that come from users (a VMI's uid
hashes into a tap name, a namespace name into a netns) cannot be interpreted as shell syntax.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from kubevisor.network.errors import CommandError

__all__ = ["run"]

log = logging.getLogger("kubevisor.network")

DEFAULT_TIMEOUT = 30.0
"""Seconds a host tool may take; ``ip`` and ``nft`` answer in milliseconds unless the host is stuck."""


async def run(argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run ``argv``, feeding it ``stdin``; its stdout. Raises :class:`CommandError` on a non-zero exit,
    when it is not installed, or when it outlives ``timeout`` (it is killed then)."""
    log.debug("run %s", argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as e:
        raise CommandError(argv, 127, f"{argv[0]} is not installed; run `make install`") from e
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandError(argv, -9, f"no answer after {timeout:g} s") from None
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode or 0, err.decode(errors="replace").strip())
    return out.decode(errors="replace")
