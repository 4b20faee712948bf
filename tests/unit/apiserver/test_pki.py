"""Cluster PKI: certificates chain to the CA, idempotency, re-issue, kubeconfigs, tokens, and real TLS."""

from __future__ import annotations

import base64
import socket
import ssl
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubevisor.apiserver.pki import (
    PKI,
    TOKEN_ISSUER,
    PKIError,
    TokenIssuer,
    ensure_pki,
    issue_client_cert,
    user_from_certificate,
    write_kubeconfig,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return ensure_pki(tmp_path_factory.mktemp("shared") / "pki", hosts=["kubevisor.example", "10.1.2.3"])


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)), {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


def _snapshot(pki: PKI) -> dict[str, tuple[bytes, int]]:
    paths = [
        pki.ca_cert,
        pki.ca_key,
        pki.serving_cert,
        pki.serving_key,
        pki.admin_cert,
        pki.admin_key,
        pki.token_key,
    ]
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- certificates --------------------------------------------------------------------------------


def test_layout_and_permissions(pki: PKI) -> None:
    assert _mode(pki.directory) == 0o700
    for key in (pki.ca_key, pki.serving_key, pki.admin_key, pki.token_key):
        assert _mode(key) == 0o600, key
    assert not [p for p in pki.directory.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_ca_is_self_signed_p256_for_ten_years(pki: PKI) -> None:
    ca = _cert(pki.ca_cert)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubevisor-ca"
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3651)


def test_serving_certificate_chains_to_ca_with_sans(pki: PKI) -> None:
    ca, serving = _cert(pki.ca_cert), _cert(pki.serving_cert)
    serving.verify_directly_issued_by(ca)
    dns, ips = _sans(serving)
    assert {"localhost", "kubevisor.example"} <= dns
    assert {"127.0.0.1", "::1", "10.1.2.3"} <= ips
    assert "10.1.2.3" not in dns, "IP addresses must be IP SANs"
    eku = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not serving.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(pki.serving_key.read_bytes(), None)
    assert key.public_key() == serving.public_key()
    assert sorted(pki.serving_hosts()) == sorted([*dns, *ips])


def test_admin_certificate(pki: PKI) -> None:
    admin = _cert(pki.admin_cert)
    admin.verify_directly_issued_by(_cert(pki.ca_cert))
    der = admin.public_bytes(serialization.Encoding.DER)
    assert user_from_certificate(der) == ("admin", ["system:masters"])
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        in admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )


def test_issue_client_cert(pki: PKI) -> None:
    cert_pem, key_pem = issue_client_cert(pki, "alice", ["dev", "ops"], days=10)
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(_cert(pki.ca_cert))
    assert user_from_certificate(cert.public_bytes(serialization.Encoding.DER)) == ("alice", ["dev", "ops"])
    assert serialization.load_pem_private_key(key_pem, None).public_key() == cert.public_key()
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < timedelta(days=11)
    with pytest.raises(ValueError):
        issue_client_cert(pki, "", [])


def test_user_from_certificate_rejects_garbage_and_missing_cn(pki: PKI) -> None:
    with pytest.raises(ValueError):
        user_from_certificate(b"not a certificate")
    ca = _cert(pki.ca_cert)
    cn_less = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "g")]))
        .issuer_name(ca.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(1)
        .not_valid_before(datetime.now(UTC))
        .not_valid_after(datetime.now(UTC) + timedelta(days=1))
        .sign(pki.load_ca()[1], ca.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match="common name"):
        user_from_certificate(cn_less.public_bytes(serialization.Encoding.DER))


def test_ensure_pki_is_idempotent(tmp_path: Path) -> None:
    first = ensure_pki(tmp_path / "pki", hosts=["a.example"])
    before = _snapshot(first)
    second = ensure_pki(tmp_path / "pki", hosts=["a.example", "localhost"])
    assert second == first
    assert _snapshot(second) == before


def test_new_host_reissues_only_the_serving_certificate(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", hosts=["a.example"])
    before = _snapshot(pki)
    ensure_pki(tmp_path / "pki", hosts=["b.example", "192.168.7.7"])
    after = _snapshot(pki)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"apiserver.crt"}
    dns, ips = _sans(_cert(pki.serving_cert))
    assert {"a.example", "b.example", "localhost"} <= dns, "hosts of the old certificate are kept"
    assert "192.168.7.7" in ips
    _cert(pki.serving_cert).verify_directly_issued_by(_cert(pki.ca_cert))
    serving_key = serialization.load_pem_private_key(pki.serving_key.read_bytes(), None)
    assert serving_key.public_key() == _cert(pki.serving_cert).public_key()


def test_interrupted_first_run_resumes(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", hosts=[])
    ca_key = pki.ca_key.read_bytes()
    pki.admin_cert.unlink()  # as if the process died between writing admin.key and admin.crt
    pki.token_key.unlink()
    admin_key = pki.admin_key.read_bytes()
    ensure_pki(tmp_path / "pki", hosts=[])
    assert pki.ca_key.read_bytes() == ca_key
    assert pki.admin_key.read_bytes() == admin_key, "an existing key is reused"
    admin = _cert(pki.admin_cert)
    admin.verify_directly_issued_by(_cert(pki.ca_cert))
    assert serialization.load_pem_private_key(admin_key, None).public_key() == admin.public_key()
    assert pki.token_key.exists()


def test_certificate_from_another_ca_is_reissued(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", hosts=[])
    other = ensure_pki(tmp_path / "other", hosts=[])
    pki.serving_cert.write_bytes(other.serving_cert.read_bytes())
    ensure_pki(tmp_path / "pki", hosts=[])
    _cert(pki.serving_cert).verify_directly_issued_by(_cert(pki.ca_cert))


def test_concurrent_first_runs_agree_on_one_ca(tmp_path: Path) -> None:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            ensure_pki(tmp_path / "pki", hosts=["a.example"])
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not failures
    pki = ensure_pki(tmp_path / "pki", hosts=["a.example"])
    ca = _cert(pki.ca_cert)
    assert pki.load_ca()[1].public_key() == ca.public_key()
    for leaf in (pki.serving_cert, pki.admin_cert):
        _cert(leaf).verify_directly_issued_by(ca)


def test_ca_certificate_without_key_is_an_error(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", hosts=[])
    pki.ca_key.unlink()
    with pytest.raises(PKIError):
        ensure_pki(tmp_path / "pki", hosts=[])


# --- kubeconfig ----------------------------------------------------------------------------------


def test_write_kubeconfig_with_client_certificate(pki: PKI, tmp_path: Path) -> None:
    path = tmp_path / "kube" / "config"
    cert, key = pki.admin_credentials()
    write_kubeconfig(
        path,
        server="https://127.0.0.1:6443",
        ca_pem=pki.ca_pem(),
        user="admin",
        client_cert_pem=cert,
        client_key_pem=key,
        namespace="dev",
    )
    assert _mode(path) == 0o600
    config = yaml.safe_load(path.read_text())
    assert config["apiVersion"] == "v1" and config["kind"] == "Config"
    assert config["current-context"] == "kubevisor"
    [cluster] = config["clusters"]
    assert cluster["name"] == "kubevisor"
    assert cluster["cluster"]["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == pki.ca_pem()
    [user] = config["users"]
    assert user["name"] == "admin"
    assert base64.b64decode(user["user"]["client-certificate-data"]) == cert
    assert base64.b64decode(user["user"]["client-key-data"]) == key
    assert "token" not in user["user"]
    [context] = config["contexts"]
    assert context == {
        "name": "kubevisor",
        "context": {"cluster": "kubevisor", "user": "admin", "namespace": "dev"},
    }


def test_write_kubeconfig_with_token_replaces_atomically(pki: PKI, tmp_path: Path) -> None:
    path = tmp_path / "config"
    write_kubeconfig(
        path, server="https://a", ca_pem=pki.ca_pem(), user="u", token="t1", cluster="c", context="x"
    )
    write_kubeconfig(
        path, server="https://b", ca_pem=pki.ca_pem(), user="u", token="t2", cluster="c", context="x"
    )
    config = yaml.safe_load(path.read_text())
    assert config["users"] == [{"name": "u", "user": {"token": "t2"}}]
    assert config["clusters"][0]["cluster"]["server"] == "https://b"
    assert config["contexts"] == [{"name": "x", "context": {"cluster": "c", "user": "u"}}]
    assert config["current-context"] == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["config"]
    with pytest.raises(ValueError):
        write_kubeconfig(path, server="https://a", ca_pem=b"", user="u", client_cert_pem=b"cert")


# --- tokens --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_service_account_token_round_trip(pki: PKI) -> None:
    issuer = TokenIssuer.from_pki(pki)
    token, expires = issuer.issue(
        username="system:serviceaccount:team:builder",
        uid="sa-uid-1",
        groups=["system:serviceaccounts", "system:serviceaccounts:team"],
        audiences=None,
        expiration_seconds=3600,
        extra={"pod": "p1"},
    )
    assert timedelta(seconds=3590) < expires - datetime.now(UTC) <= timedelta(seconds=3600)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == issuer.key_id
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw["iss"] == TOKEN_ISSUER and raw["sub"] == "system:serviceaccount:team:builder"
    assert raw["kubevisor.io"] == {
        "namespace": "team",
        "serviceaccount": {"name": "builder", "uid": "sa-uid-1"},
    }
    assert {"exp", "iat", "nbf", "uid", "groups"} <= set(raw)
    claims = pki.token_issuer().verify(token)
    assert claims is not None
    assert claims.username == "system:serviceaccount:team:builder"
    assert claims.uid == "sa-uid-1"
    assert claims.groups == ["system:serviceaccounts", "system:serviceaccounts:team"]
    assert (claims.namespace, claims.sa_name, claims.sa_uid) == ("team", "builder", "sa-uid-1")
    assert claims.expires == expires
    assert claims.audiences == [TOKEN_ISSUER]
    assert claims.extra == {"pod": "p1"}


def test_user_token_has_no_service_account_binding(pki: PKI) -> None:
    issuer = pki.token_issuer()
    token, _ = issuer.issue(username="bob", uid="u-1", groups=["dev"], audiences=None, expiration_seconds=60)
    assert "kubevisor.io" not in jwt.decode(token, options={"verify_signature": False})
    claims = issuer.verify(token)
    assert claims is not None
    assert (claims.username, claims.groups, claims.namespace, claims.sa_name, claims.sa_uid) == (
        "bob",
        ["dev"],
        None,
        None,
        None,
    )


def test_expired_and_not_yet_valid_tokens_are_rejected(pki: PKI) -> None:
    clock = Clock()
    issuer = pki.token_issuer(clock=clock)
    token, expires = issuer.issue(username="bob", uid="u", groups=[], audiences=None, expiration_seconds=600)
    assert expires == clock.now + timedelta(seconds=600)
    assert issuer.verify(token) is not None
    clock.now += timedelta(seconds=599)
    assert issuer.verify(token) is not None
    clock.now += timedelta(seconds=1)
    assert issuer.verify(token) is None
    clock.now -= timedelta(hours=1)
    assert issuer.verify(token) is None, "not valid before nbf"
    assert TokenIssuer.from_pki(pki).verify(token) is None, "expired by the real clock too"


def test_audiences(pki: PKI) -> None:
    issuer = pki.token_issuer()
    token, _ = issuer.issue(username="bob", uid="u", groups=[], audiences=["vault"], expiration_seconds=60)
    assert issuer.verify(token) is None, "the apiserver only accepts its own audiences"
    assert issuer.verify(token, audiences=["vault", "other"]) is not None
    both, _ = issuer.issue(
        username="b", uid="u", groups=[], audiences=["vault", TOKEN_ISSUER], expiration_seconds=60
    )
    assert issuer.verify(both) is not None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJub25lIn0.e30.",
        "\x00\xff",
        "Bearer x.y.z",
        "x" * 10000,
    ],
)
def test_garbage_tokens_are_rejected_without_raising(pki: PKI, token: str) -> None:
    assert pki.token_issuer().verify(token) is None


def test_tokens_signed_otherwise_are_rejected(pki: PKI) -> None:
    issuer = pki.token_issuer()
    other = TokenIssuer(ec.generate_private_key(ec.SECP256R1()))
    foreign, _ = other.issue(username="bob", uid="u", groups=[], audiences=None, expiration_seconds=60)
    assert issuer.verify(foreign) is None
    good, _ = issuer.issue(username="bob", uid="u", groups=[], audiences=None, expiration_seconds=60)
    header, payload, signature = good.split(".")
    tampered_payload = jwt.utils.base64url_encode(b'{"sub":"admin","iss":"https://kubevisor.local"}').decode()
    assert issuer.verify(f"{header}.{tampered_payload}.{signature}") is None
    assert issuer.verify(f"{header}.{payload}.{signature[:-4]}AAAA") is None
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "iss": TOKEN_ISSUER,
        "sub": "bob",
        "aud": [TOKEN_ISSUER],
        "exp": now + 60,
        "iat": now,
        "nbf": now,
    }
    hs256 = jwt.encode(claims, "secret-key-long-enough-for-hmac-sha256!!", algorithm="HS256")
    assert issuer.verify(hs256) is None
    key_pem = pki.token_key.read_bytes()
    same_key_other_issuer = TokenIssuer.from_pem(key_pem, issuer="https://elsewhere")
    token, _ = same_key_other_issuer.issue(
        username="b", uid="", groups=[], audiences=None, expiration_seconds=60
    )
    assert issuer.verify(token) is None


def test_forged_service_account_binding_is_rejected(pki: PKI) -> None:
    issuer = pki.token_issuer()
    key = serialization.load_pem_private_key(pki.token_key.read_bytes(), None)
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "iss": TOKEN_ISSUER,
        "sub": "system:serviceaccount:team:builder",
        "aud": [TOKEN_ISSUER],
        "exp": now + 60,
        "iat": now,
        "nbf": now,
        "uid": "x",
        "groups": [],
        "kubevisor.io": {"namespace": "other", "serviceaccount": {"name": "builder", "uid": "x"}},
    }
    assert issuer.verify(jwt.encode(claims, key, algorithm="ES256")) is None  # type: ignore[arg-type]
    del claims["kubevisor.io"]
    assert issuer.verify(jwt.encode(claims, key, algorithm="ES256")) is None  # type: ignore[arg-type]


def test_issue_validates_arguments(pki: PKI) -> None:
    issuer = pki.token_issuer()
    with pytest.raises(ValueError):
        issuer.issue(username="", uid="", groups=[], audiences=None, expiration_seconds=60)
    with pytest.raises(ValueError):
        issuer.issue(username="a", uid="", groups=[], audiences=None, expiration_seconds=0)
    with pytest.raises(ValueError):
        TokenIssuer(ec.generate_private_key(ec.SECP384R1()))


# --- TLS -----------------------------------------------------------------------------------------


def test_tls_with_admin_client_certificate(pki: PKI) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    server_ctx.load_cert_chain(str(pki.serving_cert), str(pki.serving_key))
    server_ctx.verify_mode = ssl.CERT_OPTIONAL
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    peers: list[bytes | None] = []
    failures: list[BaseException] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    peers.append(der)
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as e:  # pragma: no cover - reported by the assertions below
                failures.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        for server_hostname in ("localhost", "127.0.0.1"):
            client_ctx = pki.client_ssl_context()
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                assert tls.recv(2) == b"ok"
        thread.join(timeout=10)
    finally:
        listener.close()
    assert not failures
    assert len(peers) == 2
    for der in peers:
        assert isinstance(der, bytes)
        assert user_from_certificate(der) == ("admin", ["system:masters"])


def test_server_ssl_context_accepts_clients_without_certificates(pki: PKI) -> None:
    server_ctx = pki.server_ssl_context()
    assert server_ctx.verify_mode == ssl.CERT_OPTIONAL
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    result: list[bytes | None] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            result.append(tls.getpeercert(binary_form=True))
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="::1") as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join(timeout=10)
    finally:
        listener.close()
    assert result == [None]
