"""`python3 startup.py --keys`: a CA and the key+certificate files it signs, made with `cryptography`.

One folder holds one CA: `ca.pem` (its certificate, for `ssl_ca_cert_file`)
and `ca.key.pem` (its private key, mode 0600, needed only to sign more
certificates). `server` and `client` write `NAME.pem` next to them: the
private key and the certificate in one file (mode 0600), which is what
`ssl_key_cert_file` loads. `cage` writes `cages/NAME.pem`, the identity a
cage shows other cages (SAN URI `pmnc://FLOCK/NAME`, client and server
use). Nothing is overwritten unless asked to.

    python3 startup.py --keys ca DIR [--name "pmnc CA"] [--days 3650] [--force]
    python3 startup.py --keys server DIR NAME [--host H]... [--days 825] [--force]
    python3 startup.py --keys client DIR NAME [--days 825] [--force]
    python3 startup.py --keys cage DIR NAME [--flock DEFAULT] [--days 825] [--force]

The same from Python: `make_ca`, `make_server`, `make_client`, `make_cage`.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pmnc.errors import KeysError

CA_CERT, CA_KEY = "ca.pem", "ca.key.pem"
CAGES = "cages"  # the subfolder of cage identities
CAGE_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS, LEAF_DAYS = 3650, 825
MAX_DAYS = 36500
# Certificates start a day in the past: a peer whose clock is behind (or set to
# the wrong time zone) must not see a certificate that is "not yet valid".
BACKDATE = datetime.timedelta(days=1)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a file name and a CN (at most 64 characters)
_RESERVED = {"ca", "ca.key"}  # NAME.pem would be the CA's own files
_DNS = re.compile(r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# --- the Python API ---------------------------------------------------------------------


def make_ca(directory: str | os.PathLike[str], name: str = "pmnc CA", days: int = CA_DAYS,
            *, force: bool = False) -> Path:
    """Write `directory/ca.pem` and `directory/ca.key.pem`; return the certificate's path."""
    folder = Path(directory)
    if not name.strip() or len(name) > 64 or any(ord(c) < 32 for c in name):
        raise KeysError(f"invalid CA name {name!r}: 1 to 64 printable characters")
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    _check_free([cert_path, key_path], force)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = _now()
    cert = (_builder(subject, subject, key.public_key(), now, now + datetime.timedelta(days=_days(days)))
            # path_length=0: this CA signs certificates for cages and clients, never other CAs
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path


def make_server(directory: str | os.PathLike[str], name: str, hosts: Iterable[str] = DEFAULT_HOSTS,
                days: int = LEAF_DAYS, *, force: bool = False) -> Path:
    """Write `directory/NAME.pem`: a key and a serverAuth certificate for `hosts`, signed by the CA there."""
    names = [_general_name(host) for host in ((hosts,) if isinstance(hosts, str) else hosts)]
    if not names:
        raise KeysError("a server certificate needs at least one host")
    extensions = [(x509.SubjectAlternativeName(list(dict.fromkeys(names))), False),
                  (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)]
    return _make_leaf(Path(directory), name, days, force, extensions)


def make_client(directory: str | os.PathLike[str], name: str, days: int = LEAF_DAYS,
                *, force: bool = False) -> Path:
    """Write `directory/NAME.pem`: a key and a clientAuth certificate for CN=NAME, signed by the CA there."""
    extensions = [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)]
    return _make_leaf(Path(directory), name, days, force, extensions)


def make_cage(directory: str | os.PathLike[str], cage: str, flock: str = "DEFAULT", days: int = LEAF_DAYS,
              *, force: bool = False) -> Path:
    """Write `directory/cages/CAGE.pem`: the key and certificate cage CAGE of flock FLOCK
    shows other cages, both as a server and as a client; its identity is the SAN URI."""
    if not CAGE_NAME.fullmatch(cage) or not CAGE_NAME.fullmatch(flock):
        raise KeysError(f"invalid cage {cage!r} or flock {flock!r}: 1 to 32 of A-Z a-z 0-9 _ -")
    extensions = [(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(cage_uri(flock, cage))]), False),
                  (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)]
    folder = Path(directory)
    (folder / CAGES).mkdir(mode=0o700, exist_ok=True)
    return _make_leaf(folder, cage, days, force, extensions, into=folder / CAGES)


def write_secret(path: Path, data: bytes) -> None:
    """A new file readable by its owner only (a key), written at once."""
    _write(path, data, 0o600)


def cage_uri(flock: str, cage: str) -> str:
    return f"pmnc://{flock}/{cage}"


def load_ca(directory: str | os.PathLike[str]) -> tuple[x509.Certificate, CaKey]:
    """The CA in `directory`, checked: a CA certificate and the private key that matches it."""
    folder = Path(directory)
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    for path in (cert_path, key_path):
        if not path.is_file():
            raise KeysError(f"no CA in {folder}: {path.name} is missing "
                            f"(make one with: python3 startup.py --keys ca {folder})")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        raise KeysError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except TypeError:
        raise KeysError(f"{key_path} is encrypted; pmnc needs an unencrypted CA key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeysError(f"{key_path} is not a PEM private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise KeysError(f"{key_path}: only EC and RSA CA keys are supported")
    if key.public_key() != cert.public_key():
        raise KeysError(f"{key_path} is not the key of the certificate {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise KeysError(f"{cert_path} is not a CA certificate")
    return cert, key


# --- inside -------------------------------------------------------------------------------


def _make_leaf(folder: Path, name: str, days: int, force: bool,
               extensions: Sequence[tuple[x509.ExtensionType, bool]], into: Path | None = None) -> Path:
    if not _NAME.fullmatch(name) or name.lower() in _RESERVED:
        raise KeysError(f"invalid name {name!r}: 1 to 64 of A-Z a-z 0-9 _ . - (starting with a letter or digit), "
                        f"not {' or '.join(sorted(_RESERVED))}")
    ca_cert, ca_key = load_ca(folder)
    path = (into or folder) / f"{name}.pem"
    _check_free([path], force)
    key = _new_key()
    now = _now()
    # a certificate outliving its CA would be refused anyway: stop where the CA stops
    until = min(now + datetime.timedelta(days=_days(days)), ca_cert.not_valid_after_utc)
    if until <= now:
        raise KeysError(f"the CA in {folder} has expired")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (_builder(subject, ca_cert.subject, key.public_key(), now, until)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(ca=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(_authority_key_id(ca_cert, ca_key), critical=False))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(path, _key_pem(key) + cert.public_bytes(serialization.Encoding.PEM), 0o600)
    return path


def _new_key() -> ec.EllipticCurvePrivateKey:
    # EC P-256, not RSA 2048: made in a millisecond rather than tens or hundreds of
    # them (it matters when a cluster CA and many test certificates are made on the
    # fly), at least as strong (~128-bit vs ~112-bit), smaller handshakes, and
    # ECDSA P-256 is accepted by every TLS 1.2+ stack pmnc meets (OpenSSL, curl, browsers).
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: datetime.datetime, until: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(until))


def _key_usage(ca: bool) -> x509.KeyUsage:
    # an EC key only signs (ECDHE makes the session keys), so no key_encipherment
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _authority_key_id(ca_cert: x509.Certificate, ca_key: CaKey) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:  # a CA made elsewhere
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _general_name(host: str) -> x509.GeneralName:
    host = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not _DNS.fullmatch(host):
        raise KeysError(f"invalid host {host!r}: give a DNS name (ASCII, *.wildcards allowed) or an IP address")
    return x509.DNSName(host.lower())


def _days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise KeysError(f"invalid validity {days!r} days: 1 to {MAX_DAYS}")
    return days


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_free(paths: list[Path], force: bool) -> None:
    for path in paths:
        if path.is_dir():
            raise KeysError(f"{path} is a folder")
        if path.exists() and not force:
            raise KeysError(f"{path} already exists (--force replaces it)")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write a new file in place of `path` at once, created with `mode` (a key is never readable by others)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


# --- the command ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise KeysError(f"{message} (see python3 {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="startup.py --keys", description="Make a CA and the key+certificate files it signs.")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="ca|server|client|cage")
    ca = kinds.add_parser("ca", help="a new CA: DIR/ca.pem and DIR/ca.key.pem")
    ca.add_argument("--name", default="pmnc CA", help="the CA's common name (default: %(default)s)")
    server = kinds.add_parser("server", help="DIR/NAME.pem for an HTTPS interface, signed by DIR's CA")
    client = kinds.add_parser("client", help="DIR/NAME.pem for a client (CN=NAME), signed by DIR's CA")
    cage = kinds.add_parser("cage", help="DIR/cages/NAME.pem: cage NAME's identity for cage-to-cage calls")
    cage.add_argument("--flock", default="DEFAULT", help="the cluster's flock_id (default: %(default)s)")
    for sub, days in ((ca, CA_DAYS), (server, LEAF_DAYS), (client, LEAF_DAYS), (cage, LEAF_DAYS)):
        sub.add_argument("dir", metavar="DIR", help="the CA's folder")
        if sub is not ca:
            sub.add_argument("name", metavar="NAME", help="the file name and the certificate's CN")
        sub.add_argument("--days", type=int, default=days, help="validity (default: %(default)s)")
        sub.add_argument("--force", action="store_true", help="replace existing files")
    server.add_argument("--host", action="append", metavar="HOST",
                        help="a DNS name or IP address the server answers on; repeat for more "
                             f"(default: {' '.join(DEFAULT_HOSTS)})")
    return parser


def main(argv: list[str]) -> int:
    """`python3 startup.py --keys ...`: 0 when the files are written, 2 with a one-line error."""
    try:
        args = _parser().parse_args(argv)
        if args.kind == "ca":
            path = make_ca(args.dir, args.name, args.days, force=args.force)
            print(f"{path}: the CA certificate (give it to clients and to ssl_ca_cert_file)\n"
                  f"{path.with_name(CA_KEY)}: its private key (keep it secret; it signs new certificates)")
        elif args.kind == "server":
            hosts = args.host or DEFAULT_HOSTS
            path = make_server(args.dir, args.name, hosts, args.days, force=args.force)
            print(f"{path}: key and server certificate for {', '.join(hosts)} (ssl_key_cert_file)")
        elif args.kind == "cage":
            path = make_cage(args.dir, args.name, args.flock, args.days, force=args.force)
            print(f"{path}: key and certificate of cage {args.name} in flock {args.flock}")
        else:
            path = make_client(args.dir, args.name, args.days, force=args.force)
            print(f"{path}: key and client certificate for CN={args.name}")
    except (KeysError, OSError) as e:
        print(f"startup.py --keys: {e}", file=sys.stderr)
        return 2
    return 0
