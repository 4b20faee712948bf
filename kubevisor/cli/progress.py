"""The progress bar of the CLI's transfers (``image-upload``, ``vmexport download``). rich is imported on
use only: every CLI start would pay for it otherwise."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["transfer_progress"]


def transfer_progress() -> Progress:
    """A bar with bytes done, speed and time left on stderr; silent when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    return Progress(
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
    )
