"""The cluster's PKI: a CA, the apiserver's serving certificate, client certificates, kubeconfigs and tokens.

kubectl and client-go only talk to an apiserver over TLS they can verify, and authenticate with either a
client certificate (user = CN, groups = O, as Kubernetes does) or a bearer token. This module creates and
maintains everything needed for that in one directory:

``ca.crt``/``ca.key``
    the cluster CA (EC P-256, CN ``kubevisor-ca``, 10 years). It signs every certificate below; clients
    trust it through ``certificate-authority-data`` in their kubeconfig.
``apiserver.crt``/``apiserver.key``
    the serving certificate, with a SAN for every host the server is reached at.
``admin.crt``/``admin.key``
    the bootstrap admin client certificate (CN ``admin``, O ``system:masters``).
``sa.key``
    the EC P-256 key that signs ServiceAccount and other bearer tokens (ES256 JWTs, see :class:`TokenIssuer`).

:func:`ensure_pki` is idempotent and crash-safe: every file is written to a temporary file and renamed into
place, a private key is written before the certificate that uses it, and an existing key is never replaced,
so an interrupted first start resumes where it stopped instead of leaving a torn or mismatched key. Later
calls only re-issue a leaf certificate when it no longer fits (a new host, near expiry, another CA).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import ipaddress
import os
import ssl
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ADMIN_GROUP",
    "ADMIN_USER",
    "AGENT_CLIENT_COMMON_NAME",
    "CA_COMMON_NAME",
    "DEFAULT_HOSTS",
    "PKI",
    "TOKEN_ISSUER",
    "PKIError",
    "TokenClaims",
    "TokenIssuer",
    "ensure_agent_client",
    "ensure_agent_serving",
    "ensure_pki",
    "issue_client_cert",
    "user_from_certificate",
    "write_kubeconfig",
]

CA_COMMON_NAME = "kubevisor-ca"
SERVING_COMMON_NAME = "kubevisor-apiserver"
ADMIN_USER = "admin"
ADMIN_GROUP = "system:masters"
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
"""Always in the serving certificate, whatever the caller asks for."""

TOKEN_ISSUER = "https://kubevisor.local"
"""``iss`` of every token, and the default audience (as kube-apiserver's default ``--api-audiences``)."""
TOKEN_CLAIM = "kubevisor.io"
"""Private claim carrying the ServiceAccount binding (``kubernetes.io`` in upstream tokens)."""
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

CA_DAYS = 3650
SERVING_DAYS = 365
ADMIN_DAYS = 365
RENEW_BEFORE = timedelta(days=30)
"""A leaf certificate closer than this to expiry is re-issued by :func:`ensure_pki`."""
BACKDATE = timedelta(minutes=5)
"""notBefore is set this far in the past to tolerate clock skew between machines."""

_DIR_MODE = 0o700
_KEY_MODE = 0o600
_CERT_MODE = 0o644


class PKIError(Exception):
    """The PKI directory is in a state that cannot be repaired without losing trust (a CA without key)."""


# --- files ---------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode``; readers see the old file or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_key_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"expected an EC private key, got {type(key).__name__}")
    return key


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        return _load_key_pem(path.read_bytes())
    except ValueError as e:
        raise PKIError(f"{path}: unreadable private key: {e}") from e


def _load_cert(path: Path) -> x509.Certificate | None:
    """The certificate at ``path``; None if it is unreadable (it is then re-issued)."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return None


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ensure_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the key at ``path`` or create it. An existing key is never replaced."""
    if path.exists():
        return _load_key(path)
    key = _new_key()
    _atomic_write(path, _key_pem(key), _KEY_MODE)
    return key


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- certificates --------------------------------------------------------------------------------


def _general_name(host: str) -> x509.GeneralName | None:
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return None
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host.lower())


def _san_key(name: x509.GeneralName) -> tuple[str, str]:
    if isinstance(name, x509.IPAddress):
        return ("ip", str(name.value))
    if isinstance(name, x509.DNSName):
        return ("dns", name.value.lower())
    return (type(name).__name__, str(name.value))


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries for ``hosts`` (IPs as IP SANs, the rest as DNS SANs), deduplicated in order."""
    out: dict[tuple[str, str], x509.GeneralName] = {}
    for host in hosts:
        name = _general_name(host)
        if name is not None:
            out.setdefault(_san_key(name), name)
    return list(out.values())


def _cert_sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value)


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _make_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = _now()
    name = _name(CA_COMMON_NAME)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_leaf(
    subject: x509.Name,
    public: ec.EllipticCurvePublicKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.ObjectIdentifier,
    days: int,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _leaf_fits(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName],
) -> bool:
    """Whether ``cert`` can stay: signed by the CA, for ``key``/``subject``, has ``sans``, not expiring."""
    now = datetime.now(UTC)
    if cert.not_valid_after_utc - now < RENEW_BEFORE or cert.not_valid_before_utc > now:
        return False
    if cert.subject != subject or _spki(cert.public_key()) != _spki(key.public_key()):
        return False
    have = {_san_key(n) for n in _cert_sans(cert)}
    return {_san_key(n) for n in sans} <= have and _issued_by(cert, ca_cert)


def _ensure_leaf(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    days: int,
    sans: Sequence[x509.GeneralName] = (),
) -> None:
    key = _ensure_key(key_path)
    current = _load_cert(cert_path) if cert_path.exists() else None
    if current is not None and _leaf_fits(current, key, ca_cert, subject, sans):
        return
    if current is not None and sans:
        merged = {_san_key(n): n for n in sans}
        for n in _cert_sans(current):  # keep serving the hosts the old certificate covered
            merged.setdefault(_san_key(n), n)
        sans = list(merged.values())
    cert = _make_leaf(subject, key.public_key(), ca_cert, ca_key, usage=usage, days=days, sans=sans)
    _atomic_write(cert_path, _cert_pem(cert), _CERT_MODE)


# --- the PKI directory ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    """Paths of the cluster's PKI files, with helpers to load them."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    token_key: Path

    @classmethod
    def at(cls, directory: Path) -> PKI:
        """The file layout in ``directory`` (nothing is read or created)."""
        d = Path(directory)
        return cls(
            directory=d,
            ca_cert=d / "ca.crt",
            ca_key=d / "ca.key",
            serving_cert=d / "apiserver.crt",
            serving_key=d / "apiserver.key",
            admin_cert=d / "admin.crt",
            admin_key=d / "admin.key",
            token_key=d / "sa.key",
        )

    def ca_pem(self) -> bytes:
        """The CA certificate (PEM), for kubeconfigs and clients."""
        return self.ca_cert.read_bytes()

    def admin_credentials(self) -> tuple[bytes, bytes]:
        """The admin client certificate and key (PEM)."""
        return self.admin_cert.read_bytes(), self.admin_key.read_bytes()

    def load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The CA certificate and key, for signing."""
        return x509.load_pem_x509_certificate(self.ca_cert.read_bytes()), _load_key(self.ca_key)

    def serving_hosts(self) -> list[str]:
        """Hosts (DNS names and IPs) the serving certificate is valid for."""
        cert = x509.load_pem_x509_certificate(self.serving_cert.read_bytes())
        return [str(n.value) for n in _cert_sans(cert)]

    def token_issuer(self, **kwargs: Any) -> TokenIssuer:
        """A :class:`TokenIssuer` with the token-signing key (``kwargs`` as for :class:`TokenIssuer`)."""
        return TokenIssuer(_load_key(self.token_key), **kwargs)

    def server_ssl_context(self) -> ssl.SSLContext:
        """TLS server context: the serving certificate, client certificates optional but verified by the CA.

        A request without a client certificate goes on to token or anonymous authentication; one with a
        certificate not signed by the CA fails the handshake.
        """
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca_cert))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.serving_cert), str(self.serving_key))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def client_ssl_context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        """TLS client context trusting the CA, presenting ``cert``/``key`` (default: the admin's)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_cert))
        ctx.load_cert_chain(str(cert or self.admin_cert), str(key or self.admin_key))
        return ctx


def _ensure_dir(directory: Path) -> None:
    directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o777 != _DIR_MODE:
        directory.chmod(_DIR_MODE)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` so two processes starting at once create one CA, not two."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _ensure_ca(pki: PKI) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not pki.ca_key.exists() and pki.ca_cert.exists():
        raise PKIError(
            f"{pki.ca_cert} exists without {pki.ca_key}; restore the key or remove the PKI directory"
        )
    key = _ensure_key(pki.ca_key)
    cert = _load_cert(pki.ca_cert) if pki.ca_cert.exists() else None
    if cert is None:
        if pki.ca_cert.exists():
            raise PKIError(f"{pki.ca_cert} is not a readable certificate")
        cert = _make_ca(key)
        _atomic_write(pki.ca_cert, _cert_pem(cert), _CERT_MODE)
    elif _spki(cert.public_key()) != _spki(key.public_key()):
        raise PKIError(f"{pki.ca_cert} does not match {pki.ca_key}")
    return cert, key


def ensure_pki(pki_dir: Path, *, hosts: Sequence[str]) -> PKI:
    """Create the PKI in ``pki_dir`` on first use, load it afterwards; return its paths.

    The serving certificate covers ``hosts`` plus :data:`DEFAULT_HOSTS`. When it lacks a requested host, is
    close to expiry or was not signed by the CA, only it is re-issued (with the same key, keeping the hosts
    it already had). The admin certificate is likewise renewed near expiry. The CA and the token key are
    never replaced; :class:`PKIError` is raised if the CA certificate exists without its key.
    """
    pki = PKI.at(Path(pki_dir))
    _ensure_dir(pki.directory)
    with _locked(pki.directory):
        _ensure_files(pki, hosts)
    return pki


def _ensure_files(pki: PKI, hosts: Sequence[str]) -> None:
    ca_cert, ca_key = _ensure_ca(pki)
    _ensure_leaf(
        pki.serving_cert,
        pki.serving_key,
        ca_cert,
        ca_key,
        subject=_name(SERVING_COMMON_NAME),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        days=SERVING_DAYS,
        sans=_host_names([*DEFAULT_HOSTS, *hosts]),
    )
    _ensure_leaf(
        pki.admin_cert,
        pki.admin_key,
        ca_cert,
        ca_key,
        subject=_name(ADMIN_USER, [ADMIN_GROUP]),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        days=ADMIN_DAYS,
    )
    _ensure_key(pki.token_key)


def issue_client_cert(pki: PKI, user: str, groups: Sequence[str], days: int = 365) -> tuple[bytes, bytes]:
    """A new client certificate for ``user`` in ``groups`` signed by the cluster CA: (cert PEM, key PEM)."""
    if not user:
        raise ValueError("user must not be empty")
    ca_cert, ca_key = pki.load_ca()
    key = _new_key()
    cert = _make_leaf(
        _name(user, groups),
        key.public_key(),
        ca_cert,
        ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        days=days,
    )
    return _cert_pem(cert), _key_pem(key)


AGENT_CLIENT_COMMON_NAME = "kubevisor-apiserver-agent-client"
"""CN of the certificate the apiserver presents to node agents (kube-apiserver's kubelet client
certificate); node agents accept no other client."""


def ensure_agent_client(pki: PKI) -> tuple[Path, Path]:
    """The apiserver's client certificate and key for node agents (created or renewed as needed):
    ``apiserver-agent-client.{crt,key}``. It carries no group: as an API user it may do nothing."""
    cert, key = pki.directory / "apiserver-agent-client.crt", pki.directory / "apiserver-agent-client.key"
    with _locked(pki.directory):
        ca_cert, ca_key = pki.load_ca()
        _ensure_leaf(
            cert,
            key,
            ca_cert,
            ca_key,
            subject=_name(AGENT_CLIENT_COMMON_NAME),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            days=SERVING_DAYS,
        )
    return cert, key


def ensure_agent_serving(pki: PKI, node: str, hosts: Sequence[str]) -> tuple[Path, Path]:
    """The serving certificate and key of node ``node``'s agent for ``hosts`` (plus
    :data:`DEFAULT_HOSTS`): ``agent-<node>.{crt,key}``, created or re-issued as needed."""
    if not node or "/" in node or node.startswith("."):
        raise ValueError(f"node name {node!r} cannot name a certificate file")
    cert, key = pki.directory / f"agent-{node}.crt", pki.directory / f"agent-{node}.key"
    with _locked(pki.directory):
        ca_cert, ca_key = pki.load_ca()
        _ensure_leaf(
            cert,
            key,
            ca_cert,
            ca_key,
            subject=_name(f"system:node:{node}", ["system:nodes"]),
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            days=SERVING_DAYS,
            sans=_host_names([*DEFAULT_HOSTS, node, *hosts]),
        )
    return cert, key


def _attr_str(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def user_from_certificate(der: bytes) -> tuple[str, list[str]]:
    """User and groups of a (verified) client certificate: CN is the user, each O a group.

    Raises :class:`ValueError` for a certificate that does not parse or has no CN; the caller should then
    treat the request as unauthenticated by certificate.
    """
    cert = x509.load_der_x509_certificate(der)
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common_names:
        raise ValueError("client certificate has no common name")
    user = _attr_str(common_names[0].value)
    if not user:
        raise ValueError("client certificate has an empty common name")
    groups = [_attr_str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return user, groups


# --- kubeconfig ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_pem: bytes,
    user: str,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    token: str | None = None,
    cluster: str = "kubevisor",
    context: str = "kubevisor",
    namespace: str | None = None,
) -> None:
    """Write a kubeconfig (mode 0600, atomically) with one cluster, one user and one current context.

    Credentials are embedded: the CA as ``certificate-authority-data``, a client certificate as
    ``client-certificate-data``/``client-key-data`` and/or a bearer ``token``.
    """
    if (client_cert_pem is None) != (client_key_pem is None):
        raise ValueError("client_cert_pem and client_key_pem must be given together")
    user_entry: dict[str, str] = {}
    if client_cert_pem is not None and client_key_pem is not None:
        user_entry["client-certificate-data"] = _b64(client_cert_pem)
        user_entry["client-key-data"] = _b64(client_key_pem)
    if token is not None:
        user_entry["token"] = token
    context_entry: dict[str, str] = {"cluster": cluster, "user": user}
    if namespace:
        context_entry["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}
        ],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": context, "context": context_entry}],
        "current-context": context,
    }
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    _atomic_write(path, yaml.safe_dump(config, sort_keys=False).encode(), _KEY_MODE)


# --- tokens --------------------------------------------------------------------------------------


@dataclass
class TokenClaims:
    """What a verified token says about its bearer."""

    username: str
    uid: str
    groups: list[str]
    namespace: str | None
    """Namespace of the ServiceAccount, for ServiceAccount tokens."""
    sa_name: str | None
    """Name of the ServiceAccount, for ServiceAccount tokens."""
    sa_uid: str | None
    """UID of the ServiceAccount the token was issued for; the caller checks it still exists."""
    expires: datetime
    audiences: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)


def _service_account(username: str) -> tuple[str, str] | None:
    """(namespace, name) of a ``system:serviceaccount:<ns>:<name>`` username."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    parts = username[len(SERVICE_ACCOUNT_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def _str_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


class TokenIssuer:
    """Issues and verifies ES256 JWT bearer tokens signed with the cluster's token key.

    Tokens carry ``iss``, ``sub`` (the username), ``aud``, ``exp``/``iat``/``nbf``, ``jti``, ``uid`` and
    ``groups``; ServiceAccount tokens also carry a ``kubevisor.io`` claim with the namespace and the
    ServiceAccount's name and uid. A token is accepted when its signature, issuer and times are valid and its
    audiences intersect the issuer's ``audiences`` (or those passed to :meth:`verify`).
    """

    def __init__(
        self,
        signing_key: ec.EllipticCurvePrivateKey,
        *,
        issuer: str = TOKEN_ISSUER,
        audiences: Sequence[str] = (TOKEN_ISSUER,),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not isinstance(signing_key.curve, ec.SECP256R1):
            raise ValueError("ES256 needs a P-256 key")
        self._key = signing_key
        self._public = signing_key.public_key()
        self.issuer = issuer
        self.audiences = tuple(audiences)
        self._clock = clock or (lambda: datetime.now(UTC))
        digest = hashlib.sha256(_spki(self._public)).digest()
        self.key_id = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    @classmethod
    def from_pem(cls, pem: bytes, **kwargs: Any) -> TokenIssuer:
        return cls(_load_key_pem(pem), **kwargs)

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> TokenIssuer:
        return cls(_load_key(Path(path)), **kwargs)

    @classmethod
    def from_pki(cls, pki: PKI, **kwargs: Any) -> TokenIssuer:
        """The issuer for the token key of ``pki`` (see :func:`ensure_pki`)."""
        return cls(_load_key(pki.token_key), **kwargs)

    def public_key_pem(self) -> bytes:
        """The verification key (PEM), e.g. for a JWKS or an external verifier."""
        return bytes(
            self._public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def issue(
        self,
        *,
        username: str,
        uid: str,
        groups: Sequence[str],
        audiences: Sequence[str] | None,
        expiration_seconds: int,
        extra: Mapping[str, str] | None = None,
    ) -> tuple[str, datetime]:
        """A signed token for ``username`` and its expiry. ``audiences=None`` means the issuer's audiences."""
        if not username:
            raise ValueError("username must not be empty")
        if expiration_seconds <= 0:
            raise ValueError("expiration_seconds must be positive")
        now = self._clock().astimezone(UTC).replace(microsecond=0)
        expires = now + timedelta(seconds=expiration_seconds)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": username,
            "aud": list(self.audiences if audiences is None else audiences),
            "exp": int(expires.timestamp()),
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "jti": str(uuid.uuid4()),
            "uid": uid,
            "groups": list(groups),
        }
        sa = _service_account(username)
        if sa is not None:
            claims[TOKEN_CLAIM] = {"namespace": sa[0], "serviceaccount": {"name": sa[1], "uid": uid}}
        if extra:
            claims["extra"] = dict(extra)
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.key_id})
        return token, expires

    def verify(self, token: str, *, audiences: Sequence[str] | None = None) -> TokenClaims | None:
        """The claims of a valid token; None if invalid, expired, for another audience, or garbage."""
        try:
            return self._verify(token, audiences)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError, OverflowError):
            return None

    def _verify(self, token: str, audiences: Sequence[str] | None) -> TokenClaims | None:
        if not isinstance(token, str) or token.count(".") != 2:
            return None
        payload = jwt.decode(
            token,
            self._public,
            algorithms=["ES256"],
            issuer=self.issuer,
            options={
                "require": ["iss", "sub", "exp", "iat", "nbf"],
                "verify_aud": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
        now = self._clock().timestamp()
        exp, nbf = payload["exp"], payload["nbf"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, nbf)):
            return None
        if now >= exp or now < nbf:
            return None
        token_audiences = _str_list(payload.get("aud", []))
        accepted = set(self.audiences if audiences is None else audiences)
        if token_audiences is None or not accepted.intersection(token_audiences):
            return None
        username, uid = payload["sub"], payload.get("uid", "")
        groups = _str_list(payload.get("groups", []))
        extra = payload.get("extra", {})
        if not isinstance(username, str) or not username or not isinstance(uid, str) or groups is None:
            return None
        if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
            return None
        namespace = sa_name = sa_uid = None
        sa = _service_account(username)
        if sa is not None:
            binding = payload.get(TOKEN_CLAIM)
            if not isinstance(binding, dict) or not isinstance(binding.get("serviceaccount"), dict):
                return None
            account = binding["serviceaccount"]
            if binding.get("namespace") != sa[0] or account.get("name") != sa[1]:
                return None
            namespace, sa_name = sa
            sa_uid = account.get("uid")
            if not isinstance(sa_uid, str):
                return None
        return TokenClaims(
            username=username,
            uid=uid,
            groups=groups,
            namespace=namespace,
            sa_name=sa_name,
            sa_uid=sa_uid,
            expires=datetime.fromtimestamp(exp, UTC),
            audiences=token_audiences,
            extra=dict(extra),
        )
