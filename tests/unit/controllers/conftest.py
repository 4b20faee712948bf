"""Fixtures for controller unit tests: the leaked-task check of the client unit tests."""

from tests.unit.client.conftest import no_leaked_tasks

__all__ = ["no_leaked_tasks"]
