"""Fixtures: a real platform without built-in controllers, an admin client, and the leaked-task check."""

from tests.integration.client.libcluster import client, cluster, no_leaked_tasks

__all__ = ["client", "cluster", "no_leaked_tasks"]
