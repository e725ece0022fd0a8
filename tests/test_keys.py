"""`python3 startup.py --keys`: the command, the certificates it makes, and HTTPS serving with them."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, InProcessCage, http_config, module_source
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pmnc import keys

ECHO_TOKENS = module_source("""
    import json

    def process_request(request, response):
        response["content"] = json.dumps(pmnc.request.parameters["auth_tokens"]).encode()
        response["headers"]["content-type"] = "application/json"
""", ["process_request"])


def run_keys(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "startup.py"), "--keys", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> tuple[x509.Certificate, Any]:
    data = path.read_bytes()
    return x509.load_pem_x509_certificate(data), serialization.load_pem_private_key(data, password=None)


def extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(kind)


# --- the command ----------------------------------------------------------------------------------


def test_the_command_makes_a_ca_server_and_client(tmp_path: Path) -> None:
    result = run_keys(tmp_path, "ca", "keys", "--name", "test CA", "--days", "30")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "keys"
    assert mode(folder / "ca.key.pem") == 0o600
    assert not mode(folder / "ca.pem") & 0o022  # a certificate is public, but nobody else writes it

    result = run_keys(tmp_path, "server", "keys", "web", "--host", "127.0.0.1", "--host", "web.example.com")
    assert result.returncode == 0, result.stderr
    assert "keys/web.pem" in result.stdout
    assert mode(folder / "web.pem") == 0o600
    result = run_keys(tmp_path, "client", "keys", "alice", "--days", "7")
    assert result.returncode == 0, result.stderr
    assert mode(folder / "alice.pem") == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["alice.pem", "ca.key.pem", "ca.pem", "web.pem"]

    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test CA"
    assert ca.not_valid_after_utc - ca.not_valid_before_utc <= datetime.timedelta(days=31)
    web, _ = load(folder / "web.pem")
    assert extension(web, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["web.example.com"]
    alice, _ = load(folder / "alice.pem")
    assert alice.not_valid_after_utc - alice.not_valid_before_utc <= datetime.timedelta(days=8)


def test_the_command_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert run_keys(tmp_path, "ca", "keys").returncode == 0
    ca_before = (tmp_path / "keys" / "ca.pem").read_bytes()
    result = run_keys(tmp_path, "ca", "keys")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"startup.py --keys: {Path('keys') / 'ca.pem'} already exists (--force replaces it)"]
    assert (tmp_path / "keys" / "ca.pem").read_bytes() == ca_before

    assert run_keys(tmp_path, "client", "keys", "bob").returncode == 0
    bob_before = (tmp_path / "keys" / "bob.pem").read_bytes()
    result = run_keys(tmp_path, "client", "keys", "bob")
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (tmp_path / "keys" / "bob.pem").read_bytes() == bob_before
    assert run_keys(tmp_path, "client", "keys", "bob", "--force").returncode == 0
    assert (tmp_path / "keys" / "bob.pem").read_bytes() != bob_before
    assert mode(tmp_path / "keys" / "bob.pem") == 0o600
    assert run_keys(tmp_path, "ca", "keys", "--force").returncode == 0
    assert (tmp_path / "keys" / "ca.pem").read_bytes() != ca_before
    assert mode(tmp_path / "keys" / "ca.key.pem") == 0o600
    assert not list((tmp_path / "keys").glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("args, says", [
    ((), "required"),
    (("server", "nokeys", "web"), "no CA in nokeys: ca.pem is missing"),
    (("client", "keys", "bad name"), "invalid name 'bad name'"),
    (("client", "keys", "ca"), "invalid name 'ca'"),
    (("server", "keys", "web", "--host", "not a host"), "invalid host 'not a host'"),
    (("ca", "other", "--days", "0"), "invalid validity 0 days"),
    (("ca", "other", "--days", "many"), "invalid int value"),
    (("rsa", "keys"), "invalid choice"),
], ids=["nothing", "no-ca", "bad-name", "reserved-name", "bad-host", "zero-days", "bad-days", "bad-kind"])
def test_bad_command_is_a_one_line_error(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    keys.make_ca(tmp_path / "keys")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_keys(tmp_path, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("startup.py --keys: ") and says in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing made


def test_a_broken_ca_is_an_error(tmp_path: Path) -> None:
    keys.make_ca(tmp_path)
    (tmp_path / "ca.key.pem").write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(keys.KeysError, match="is not the key of the certificate"):
        keys.make_client(tmp_path, "alice")
    (tmp_path / "ca.pem").write_text("garbage")
    with pytest.raises(keys.KeysError, match="is not a PEM certificate"):
        keys.make_client(tmp_path, "alice")
    assert not (tmp_path / "alice.pem").exists()


# --- the certificates ----------------------------------------------------------------------------


def test_certificates_are_proper_x509_v3(tmp_path: Path) -> None:
    ca_path = keys.make_ca(tmp_path)
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    server, server_key = load(keys.make_server(tmp_path, "web"))
    client, client_key = load(keys.make_client(tmp_path, "alice"))
    now = datetime.datetime.now(datetime.UTC)
    ca_ski = extension(ca, x509.SubjectKeyIdentifier).value.digest
    serials = set()
    for cert in (ca, server, client):
        assert cert.version == x509.Version.v3
        assert cert.not_valid_before_utc < now - datetime.timedelta(hours=1) < now < cert.not_valid_after_utc
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert extension(cert, x509.BasicConstraints).critical
        assert extension(cert, x509.KeyUsage).critical
        assert extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
        cert.verify_directly_issued_by(ca)
        serials.add(cert.serial_number)
    assert len(serials) == 3
    assert extension(ca, x509.BasicConstraints).value.ca is True
    assert extension(ca, x509.KeyUsage).value.key_cert_sign
    for leaf, key, name, usage in ((server, server_key, "web", ExtendedKeyUsageOID.SERVER_AUTH),
                                   (client, client_key, "alice", ExtendedKeyUsageOID.CLIENT_AUTH)):
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert extension(leaf, x509.BasicConstraints).value.ca is False
        assert not extension(leaf, x509.KeyUsage).value.key_cert_sign
        assert list(extension(leaf, x509.ExtendedKeyUsage).value) == [usage]
        assert leaf.public_key() == key.public_key()
        assert leaf.not_valid_after_utc <= ca.not_valid_after_utc
    san = extension(server, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(x509.ExtensionNotFound):
        extension(client, x509.SubjectAlternativeName)


# --- serving HTTPS with them ------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    keys.make_ca(folder)
    keys.make_server(folder, "cage")
    keys.make_client(folder, "alice")
    return folder


def start(in_process_cage: Callable[..., InProcessCage], folder: Path, **config: Any) -> InProcessCage:
    return in_process_cage(interfaces={"http": http_config(ssl_key_cert_file=str(folder / "cage.pem"),
                                                           ssl_ca_cert_file=str(folder / "ca.pem"), **config)},
                           files={"interface_http.py": ECHO_TOKENS}, request_timeout=3.0)


def client_context(ca_file: Path, cert_file: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # the certificates pass the strict checks too
    if cert_file is not None:
        context.load_cert_chain(str(cert_file))
    return context


def tokens(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> dict[str, Any]:
    connection = http.client.HTTPSConnection(host, port, timeout=5.0, context=context)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())  # type: ignore[no-any-return]
    finally:
        connection.close()


def refused(port: int, context: ssl.SSLContext) -> None:
    """The server will not serve this client (with TLS 1.3 the client learns it only when it reads)."""
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        tokens(port, context)


def test_https_with_generated_files(in_process_cage: Callable[..., InProcessCage], pki: Path) -> None:
    cage = start(in_process_cage, pki)
    assert "listens on https://" in cage.log_text()
    port = cage.address()[1]
    context = client_context(pki / "ca.pem")
    for host in ("127.0.0.1", "localhost"):  # both are in the certificate, and checked
        seen = tokens(port, context, host)
        assert seen["encrypted"] is True and "peer_cn" not in seen
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw, \
                context.wrap_socket(raw, server_hostname="elsewhere.example.com"):
            pass
    # client certificates are optional by default, and give peer_cn when there is one
    assert tokens(port, client_context(pki / "ca.pem", pki / "alice.pem"))["peer_cn"] == "alice"


@pytest.mark.parametrize("tls", ["TLSv1_2", "TLSv1_3"])
def test_client_certificate_required(in_process_cage: Callable[..., InProcessCage], pki: Path, tmp_path: Path,
                                     tls: str) -> None:
    cage = start(in_process_cage, pki, ssl_client_cert_required=True)
    port = cage.address()[1]
    version = getattr(ssl.TLSVersion, tls)

    def context(cert_file: Path | None = None) -> ssl.SSLContext:
        result = client_context(pki / "ca.pem", cert_file)
        result.minimum_version = result.maximum_version = version
        return result

    seen = tokens(port, context(pki / "alice.pem"))
    assert seen["peer_cn"] == "alice" and seen["encrypted"] is True
    refused(port, context())  # no certificate
    other = tmp_path / "other"
    keys.make_ca(other, "another CA")
    refused(port, context(keys.make_client(other, "alice")))  # the right name from the wrong CA
    refused(port, context(_self_signed(tmp_path / "self.pem", "alice")))
    assert tokens(port, context(pki / "alice.pem"))["peer_cn"] == "alice"  # and it still serves


def test_client_certificate_required_without_https_is_a_config_error(
        in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = in_process_cage(interfaces={"http": http_config(ssl_client_cert_required=True)})
    assert "ssl_client_cert_required needs HTTPS" in cage.log_text()
    assert "listens on" not in cage.log_text()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _self_signed(path: Path, common_name: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    path.write_bytes(_key_pem(key) + cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o600)
    return path
