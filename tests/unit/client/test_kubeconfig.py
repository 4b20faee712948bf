"""Kubeconfig resolution and the TLS context built from it."""

from __future__ import annotations

import base64
import datetime
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubevisor.client import kubeconfig
from kubevisor.client.kubeconfig import Config, KubeconfigError


def _pem_pair(
    common_name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None
) -> tuple[bytes, bytes, x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem, name, key


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    ca_pem, _, ca_name, ca_key = _pem_pair("test-ca")
    cert_pem, key_pem, _, _ = _pem_pair("admin", (ca_name, ca_key))
    return {"ca": ca_pem, "cert": cert_pem, "key": key_pem}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kubeconfig(cluster: dict[str, Any], user: dict[str, Any], **context: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "main",
        "clusters": [
            {"name": "other", "cluster": {"server": "https://other:1"}},
            {"name": "c", "cluster": cluster},
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [
            {"name": "main", "context": {"cluster": "c", "user": "u", **context}},
            {"name": "second", "context": {"cluster": "other", "user": "u"}},
        ],
    }


def test_embedded_data_is_decoded(pki: dict[str, bytes]) -> None:
    data = _kubeconfig(
        {"server": "https://127.0.0.1:6443/", "certificate-authority-data": _b64(pki["ca"])},
        {"client-certificate-data": _b64(pki["cert"]), "client-key-data": _b64(pki["key"])},
        namespace="team",
    )
    config = kubeconfig.from_dict(data)
    assert config.server == "https://127.0.0.1:6443"
    assert config.ca_data == pki["ca"]
    assert config.client_cert_data == pki["cert"]
    assert config.client_key_data == pki["key"]
    assert config.token is None
    assert config.namespace == "team"
    assert config.context == "main"


def test_file_paths_are_relative_to_the_kubeconfig(tmp_path: Path, pki: dict[str, bytes]) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(pki["ca"])
    (tmp_path / "pki" / "admin.crt").write_bytes(pki["cert"])
    (tmp_path / "pki" / "admin.key").write_bytes(pki["key"])
    data = _kubeconfig(
        {"server": "https://127.0.0.1:6443", "certificate-authority": "pki/ca.crt"},
        {"client-certificate": "pki/admin.crt", "client-key": str(tmp_path / "pki" / "admin.key")},
    )
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(data))
    config = kubeconfig.load(path)
    assert config.ca_data == pki["ca"]
    assert config.client_cert_data == pki["cert"]
    assert config.client_key_data == pki["key"]
    assert config.namespace == "default"


def test_token_and_token_file(tmp_path: Path) -> None:
    config = kubeconfig.from_dict(_kubeconfig({"server": "https://h:1"}, {"token": "abc"}))
    assert config.token == "abc"
    (tmp_path / "token").write_text("from-file\n")
    config = kubeconfig.from_dict(
        _kubeconfig({"server": "https://h:1"}, {"tokenFile": "token"}), base_dir=tmp_path
    )
    assert config.token == "from-file"


def test_an_explicit_context_overrides_current_context() -> None:
    config = kubeconfig.from_dict(_kubeconfig({"server": "https://h:1"}, {}), context="second")
    assert config.server == "https://other:1"


def test_kubeconfig_env_names_the_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kc"
    path.write_text(yaml.safe_dump(_kubeconfig({"server": "https://env:1"}, {"token": "t"})))
    monkeypatch.setenv("KUBECONFIG", f"{path}{os.pathsep}/nonexistent")
    assert kubeconfig.default_path() == path
    assert kubeconfig.load().server == "https://env:1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"clusters": []}, "no current-context"),
        ({"current-context": "nope", "contexts": []}, "no contexts entry named 'nope'"),
        (_kubeconfig({}, {}), "has no server"),
        (_kubeconfig({"server": "https://h:1"}, {"exec": {"command": "x"}}), "exec credential plugins"),
        (
            _kubeconfig({"server": "https://h:1", "certificate-authority-data": "!!!"}, {}),
            "not valid base64",
        ),
        (
            _kubeconfig({"server": "https://h:1", "certificate-authority": "/nonexistent/ca"}, {}),
            "cannot read",
        ),
    ],
)
def test_broken_kubeconfigs_are_explained(data: dict[str, Any], message: str) -> None:
    with pytest.raises(KubeconfigError, match=message):
        kubeconfig.from_dict(data)


def test_a_missing_or_malformed_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="cannot read kubeconfig"):
        kubeconfig.load(tmp_path / "missing")
    (tmp_path / "bad").write_text("- just\n- a list\n")
    with pytest.raises(KubeconfigError, match="not a mapping"):
        kubeconfig.load(tmp_path / "bad")


def test_ssl_context_verifies_with_the_ca_and_leaves_no_key_on_disk(
    pki: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = Config(
        server="https://127.0.0.1:1",
        ca_data=pki["ca"],
        client_cert_data=pki["cert"],
        client_key_data=pki["key"],
    )
    ctx = config.ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "test-ca"),),)]
    assert list(tmp_path.iterdir()) == [], "the temporary key files must be removed"


def test_ssl_context_with_a_key_that_does_not_match_fails_clearly(pki: dict[str, bytes]) -> None:
    _, other_key, _, _ = _pem_pair("other")
    config = Config(server="https://h:1", client_cert_data=pki["cert"], client_key_data=other_key)
    with pytest.raises(KubeconfigError, match="do not load"):
        config.ssl_context()
    with pytest.raises(KubeconfigError, match="both"):
        Config(server="https://h:1", client_cert_data=pki["cert"]).ssl_context()


def test_insecure_skip_tls_verify_disables_verification() -> None:
    config = kubeconfig.from_dict(
        _kubeconfig({"server": "https://h:1", "insecure-skip-tls-verify": True}, {"token": "t"})
    )
    ctx = config.ssl_context()
    assert ctx.verify_mode == ssl.CERT_NONE
    assert not ctx.check_hostname
