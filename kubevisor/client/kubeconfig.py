"""Where the client connects and who it is: a kubeconfig file resolved into one :class:`Config`.

A kubeconfig names clusters, users and contexts; the client needs only the current context's server,
trust anchor and credentials. :func:`load` resolves them once, reading every referenced file (paths are
relative to the kubeconfig's own directory, as in client-go), so a :class:`Config` is self-contained
and later edits of the files do not change a running client.

TLS: the server is verified against the kubeconfig's CA (``certificate-authority-data`` or
``certificate-authority``), or the system store when neither is given. Python's ``ssl`` module loads a
client certificate and key only from files; when the kubeconfig embeds them, they are written to a
private temporary directory (mode 0700, files 0600), loaded, and removed before :meth:`Config.ssl_context`
returns, so key material never outlives that call on disk.

Not supported (say so rather than half-do it): exec and auth-provider credential plugins, proxies,
basic auth.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class KubeconfigError(Exception):
    """The kubeconfig is missing, malformed, or lacks what the current context needs."""


@dataclass(frozen=True)
class Config:
    """Everything needed to reach one API server as one user."""

    server: str
    """Base URL of the API server, e.g. ``https://127.0.0.1:6443``."""
    ca_data: bytes | None = None
    """PEM certificate(s) that sign the server's certificate; None trusts the system store."""
    client_cert_data: bytes | None = None
    """PEM client certificate (chain) for mutual TLS."""
    client_key_data: bytes | None = None
    """PEM private key of the client certificate."""
    token: str | None = None
    """Bearer token, sent as ``Authorization: Bearer ...``."""
    insecure_skip_tls_verify: bool = False
    """Do not verify the server certificate (only for throwaway test clusters)."""
    tls_server_name: str | None = None
    """Name to verify the server certificate against instead of the URL's host."""
    namespace: str = "default"
    """The context's namespace: the default for namespaced requests that name none."""
    context: str = ""
    """Name of the context this config came from (informational)."""

    def ssl_context(self) -> ssl.SSLContext:
        """An ``SSLContext`` that verifies the server and presents the client certificate, if any."""
        if self.insecure_skip_tls_verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_data:
            # A kubeconfig CA replaces the system store, as in client-go (and skips loading that store).
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cadata=self.ca_data.decode("ascii"))
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.client_cert_data and self.client_key_data:
            _load_cert_chain(ctx, self.client_cert_data, self.client_key_data)
        elif self.client_cert_data or self.client_key_data:
            raise KubeconfigError("a client certificate needs both the certificate and its key")
        return ctx


def default_path() -> Path:
    """``$KUBECONFIG`` (its first entry) or ``~/.kube/config``."""
    env = os.environ.get("KUBECONFIG")
    if env:
        first = next((p for p in env.split(os.pathsep) if p), None)
        if first:
            return Path(first)
    return Path.home() / ".kube" / "config"


def load(path: str | os.PathLike[str] | None = None, context: str | None = None) -> Config:
    """Read a kubeconfig file and resolve ``context`` (default: ``current-context``) into a Config."""
    file = Path(path) if path is not None else default_path()
    try:
        text = file.read_text()
    except OSError as exc:
        raise KubeconfigError(f"cannot read kubeconfig {file}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"kubeconfig {file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise KubeconfigError(f"kubeconfig {file} is not a mapping")
    return from_dict(data, context=context, base_dir=file.parent)


def from_dict(data: Mapping[str, Any], context: str | None = None, base_dir: Path | None = None) -> Config:
    """Resolve an already parsed kubeconfig; relative file paths are taken from ``base_dir``."""
    base = base_dir or Path.cwd()
    context_name = context or data.get("current-context") or ""
    if not context_name:
        raise KubeconfigError("kubeconfig has no current-context; pass a context name")
    ctx = _named(data, "contexts", "context", context_name)
    cluster_name = ctx.get("cluster") or ""
    user_name = ctx.get("user") or ""
    cluster = _named(data, "clusters", "cluster", cluster_name)
    user = _named(data, "users", "user", user_name) if user_name else {}

    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"cluster {cluster_name!r} of context {context_name!r} has no server")
    for unsupported in ("exec", "auth-provider"):
        if user.get(unsupported):
            raise KubeconfigError(f"user {user_name!r}: {unsupported} credential plugins are not supported")

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = _read(base, user["tokenFile"], f"user {user_name!r} tokenFile").decode().strip()

    return Config(
        server=str(server).rstrip("/"),
        ca_data=_data_or_file(base, cluster, "certificate-authority", f"cluster {cluster_name!r}"),
        client_cert_data=_data_or_file(base, user, "client-certificate", f"user {user_name!r}"),
        client_key_data=_data_or_file(base, user, "client-key", f"user {user_name!r}"),
        token=str(token) if token else None,
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        tls_server_name=cluster.get("tls-server-name") or None,
        namespace=ctx.get("namespace") or "default",
        context=str(context_name),
    )


def _named(data: Mapping[str, Any], section: str, field: str, name: str) -> dict[str, Any]:
    for entry in data.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(field)
            if not isinstance(value, dict):
                raise KubeconfigError(f"{section} entry {name!r} has no {field!r} mapping")
            return value
    raise KubeconfigError(f"kubeconfig has no {section} entry named {name!r}")


def _data_or_file(base: Path, section: Mapping[str, Any], key: str, what: str) -> bytes | None:
    data = section.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(data, validate=True)
        except ValueError as exc:
            raise KubeconfigError(f"{what}: {key}-data is not valid base64") from exc
    file = section.get(key)
    if file:
        return _read(base, file, f"{what} {key}")
    return None


def _read(base: Path, file: str, what: str) -> bytes:
    path = Path(os.path.expanduser(file))
    if not path.is_absolute():
        path = base / path
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KubeconfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc


def _load_cert_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Load an in-memory certificate and key through files only this process can read."""
    tmp = tempfile.mkdtemp(prefix="kubevisor-tls-")  # mode 0700
    try:
        cert_path = os.path.join(tmp, "client.crt")
        key_path = os.path.join(tmp, "client.key")
        for path, content in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise KubeconfigError(f"client certificate and key do not load: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
