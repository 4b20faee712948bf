"""What the node agent's server answers when it refuses a request: a Kubernetes ``Status`` body.

The agent's HTTPS server (:mod:`kubevisor.agent.serving`) and its upload and export handlers refuse with
the same shape the API server uses, so the API server can pass the answer on unchanged to kubectl and the
CLI."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from kubevisor.api.registry import Obj

__all__ = ["Refusal"]


class Refusal(Exception):
    """A request refused: HTTP ``code``, Kubernetes ``reason``, and a message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }

    def response(self) -> Response:
        return Response(orjson.dumps(self.status()), self.code, media_type="application/json")
