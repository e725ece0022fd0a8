"""Who a cage is to other cages: the cluster's keys, and the mutual TLS built on them.

One folder (`cages/.shared/ssl_keys/` unless `config_cluster.ssl_keys_dir`
says otherwise) holds the cluster:

    ca.pem, ca.key.pem     the cluster CA (the key only where certificates are made)
    cluster.key            32 random bytes: the HMAC key of discovery packets
    cages/<cage>.pem       each cage's key and certificate, SAN URI pmnc://<flock>/<cage>

On first start, a cage makes what is missing - the CA, the cluster key, its
own certificate - under an exclusive file lock, so cages starting together
agree on one CA. A cage whose certificate is missing where the CA key is not
(a production host given only `ca.pem`, `cluster.key` and its own
certificate) refuses to start with the command that makes one.

Both ends of every connection show a certificate of this CA; each checks
the other's identity URI: the client that it reached the cage it called,
the server who is calling (that, never the payload, is the caller's name).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pmnc import keys
from pmnc.errors import KeysError

CLUSTER_KEY = "cluster.key"
CAGE_NAME = keys.CAGE_NAME
_URI = re.compile(r"pmnc://([A-Za-z0-9_-]{1,32})/([A-Za-z0-9_-]{1,32})")


@dataclass(frozen=True)
class Identity:
    flock: str
    cage: str


class ClusterKeys:
    def __init__(self, folder: Path, flock: str, cage: str) -> None:
        self.folder, self.flock, self.cage = folder, flock, cage
        self.cert_file = folder / keys.CAGES / f"{cage}.pem"
        self.ca_file = folder / keys.CA_CERT
        self.hmac_key = b""

    @classmethod
    def ensure(cls, folder: Path, flock: str, cage: str) -> ClusterKeys:
        """The cluster's keys for this cage, made where missing (see the module's doc)."""
        self = cls(folder, flock, cage)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._make_missing()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self.hmac_key = (folder / CLUSTER_KEY).read_bytes()
        if len(self.hmac_key) < 16:
            raise KeysError(f"{folder / CLUSTER_KEY} is too short: at least 16 random bytes are needed")
        self.server_context()  # fail at start, not at the first call, if a file is broken
        return self

    def _make_missing(self) -> None:
        folder = self.folder
        if not self.ca_file.exists():
            if self.cert_file.exists():
                raise KeysError(f"{self.ca_file} is missing but {self.cert_file} exists: copy the cluster's CA")
            keys.make_ca(folder, f"pmnc cluster {self.flock}")
        if not (folder / CLUSTER_KEY).exists():
            keys.write_secret(folder / CLUSTER_KEY, secrets.token_bytes(32))
        if not self.cert_file.exists():
            if not (folder / keys.CA_KEY).exists():
                raise KeysError(f"no certificate for cage {self.cage} in {folder / keys.CAGES} and no CA key to make "
                                f"one: python3 startup.py --keys cage {folder} {self.cage} --flock {self.flock}")
            keys.make_cage(folder, self.cage, self.flock)

    # --- TLS contexts ---------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._common(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # cages move between addresses: the identity URI is checked instead
        self._common(context)
        return context

    def _common(self, context: ssl.SSLContext) -> None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_cert_chain(self.cert_file)
            context.load_verify_locations(self.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise KeysError(f"the cluster keys in {self.folder} cannot be used: {e}") from None


def peer_identity(peercert: dict[str, Any] | None) -> Identity | None:
    """The cage a verified peer certificate names (its pmnc:// SAN URI), or None."""
    if not peercert:
        return None
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI" and (match := _URI.fullmatch(value)):
            return Identity(match.group(1), match.group(2))
    return None


def keys_folder(cages_dir: str, configured: str | None) -> Path:
    if configured:
        return Path(os.path.expanduser(configured))
    return Path(cages_dir) / ".shared" / "ssl_keys"
