"""What the pod network library raises, and what each error means for the caller::

    NetworkError                 anything this package raises
    ├── CommandError             a host tool (ip, nft) failed: argv, exit status and its stderr
    ├── NetnsError               a network namespace could not be entered (missing, no privilege)
    ├── ConfigError              the node's network settings cannot work (also a ValueError): fix them
    └── IpamError                the address store is unreadable or inconsistent: repair or remove it
        └── AddressesExhausted   every address of the pod CIDR is in use: release some or widen it

Host changes that fail part way are undone before the error propagates, so an error never means "half
configured". Wrapped errors keep their cause in ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["AddressesExhausted", "CommandError", "ConfigError", "IpamError", "NetnsError", "NetworkError"]


class NetworkError(Exception):
    """Base of every error this package raises."""


class CommandError(NetworkError):
    """A host tool exited with a failure (or could not be started)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        """The argument list that ran."""
        self.returncode = returncode
        """Its exit status (``-N``: killed by signal N; ``127``: not installed)."""
        self.stderr = stderr
        """What it wrote on stderr, stripped."""
        super().__init__(f"{' '.join(self.argv)}: exit {returncode}: {stderr or '(no output)'}")


class NetnsError(NetworkError):
    """A network namespace could not be entered."""


class ConfigError(NetworkError, ValueError):
    """The node's network settings are inconsistent; the message names the setting to change."""


class IpamError(NetworkError):
    """The address store cannot be used as it is; the message names the file."""


class AddressesExhausted(IpamError):
    """No free address is left in the pod CIDR."""
