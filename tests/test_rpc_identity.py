"""Cluster keys: made once on first start, shared by cages starting together, checked at both ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from cryptography import x509
from pmnc import keys
from pmnc.errors import KeysError
from pmnc.rpc.identity import ClusterKeys, Identity, peer_identity

ENSURE = """
import sys
sys.path.insert(0, {lib!r})
from pathlib import Path
from pmnc.rpc.identity import ClusterKeys
ClusterKeys.ensure(Path({folder!r}), "F", sys.argv[1])
"""


def test_cages_starting_together_agree_on_one_ca(tmp_path: Path) -> None:
    folder = tmp_path / "ssl_keys"
    script = ENSURE.format(lib=str(ROOT / "lib"), folder=str(folder))
    starts = [subprocess.Popen([sys.executable, "-c", script, f"cage{i}"]) for i in range(6)]
    assert [p.wait(30) for p in starts] == [0] * 6
    ca = x509.load_pem_x509_certificate((folder / keys.CA_CERT).read_bytes())
    for i in range(6):
        pem = (folder / keys.CAGES / f"cage{i}.pem").read_bytes()
        cert = x509.load_pem_x509_certificates(pem)[0]
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [f"pmnc://F/cage{i}"]
    assert len((folder / "cluster.key").read_bytes()) == 32
    assert (folder / "cluster.key").stat().st_mode & 0o077 == 0


def test_a_host_without_the_ca_key_needs_its_certificate_made_elsewhere(tmp_path: Path) -> None:
    folder = tmp_path / "ssl_keys"
    ClusterKeys.ensure(folder, "F", "one")
    (folder / keys.CA_KEY).unlink()
    assert ClusterKeys.ensure(folder, "F", "one").hmac_key  # its own certificate is there
    with pytest.raises(KeysError, match="--keys cage"):
        ClusterKeys.ensure(folder, "F", "two")


def test_a_certificate_without_its_ca_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ssl_keys"
    ClusterKeys.ensure(folder, "F", "one")
    (folder / keys.CA_CERT).unlink()
    with pytest.raises(KeysError, match="copy the cluster's CA"):
        ClusterKeys.ensure(folder, "F", "one")


def test_peer_identity_reads_only_pmnc_uris() -> None:
    assert peer_identity({"subjectAltName": (("DNS", "x"), ("URI", "pmnc://F/worker"))}) == Identity("F", "worker")
    assert peer_identity({"subjectAltName": (("URI", "pmnc://F/a/b"),)}) is None
    assert peer_identity({"subjectAltName": (("URI", "https://F/worker"),)}) is None
    assert peer_identity({}) is None
    assert peer_identity(None) is None


def test_the_keys_command_makes_a_cage_certificate(tmp_path: Path) -> None:
    keys.make_ca(tmp_path)
    done = subprocess.run([sys.executable, str(ROOT / "startup.py"), "--keys", "cage", str(tmp_path), "worker",
                           "--flock", "PROD"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "cage worker in flock PROD" in done.stdout
    cert = x509.load_pem_x509_certificates((tmp_path / "cages" / "worker.pem").read_bytes())[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["pmnc://PROD/worker"]
    bad = subprocess.run([sys.executable, str(ROOT / "startup.py"), "--keys", "cage", str(tmp_path), "a.b"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid cage" in bad.stderr
