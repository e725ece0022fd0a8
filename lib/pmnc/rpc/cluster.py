"""The cage's place in its cluster: config_cluster.py, the keys, the locator, reverse calls,
and with transport "nats" the NATS connection (bus.py) and the seals of its calls (seal.py).

The runtime holds its `ClusterHandle`: the cluster is made on first use (the rpc
interface starting, or the first call to another cage) and stopped with the cage.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import TYPE_CHECKING, Any

from pmnc import busywait, log
from pmnc.config import read_settings
from pmnc.errors import ConfigError, ResourceError
from pmnc.rpc.bus import Bus
from pmnc.rpc.codec import DEFAULT_LIMIT
from pmnc.rpc.identity import CAGE_NAME, ClusterKeys, keys_folder
from pmnc.rpc.locator import Locator
from pmnc.rpc.reverse import ReverseCalls
from pmnc.rpc.seal import Sealer
from pmnc.schema import Key, Schema, names

if TYPE_CHECKING:
    from pmnc.loader import Loader

TRANSPORTS = ("direct", "nats")
BUSY_WAIT = 0.0002  # seconds: a quick call's answer (and the next call of a caller in a loop) comes within it
RETRY_STORES = ("local", "jetstream")


def _nats_tls(value: Any) -> str | dict[str, str] | None:
    if value is None or value == "cluster":
        return value  # type: ignore[no-any-return]
    if isinstance(value, dict) and set(value) <= {"ca_file", "cert_file", "key_file"} and \
            all(isinstance(v, str) for v in value.values()):
        return value
    raise ValueError(value)


_nats_tls.expected = 'None, "cluster" or {"ca_file": ..., "cert_file": ..., "key_file": ...}'  # type: ignore[attr-defined]


KEYS = Schema(  # of config_cluster.py
    flock_id=Key("DEFAULT", str),  # cages see and call only cages of the same flock
    ssl_keys_dir=Key(None, str),  # None: cages/.shared/ssl_keys (made if missing)
    broadcast_address=Key(None),  # LAN discovery: ("<bind ip>/<broadcast ip>", port); None: this machine only
    advertise_period=Key(5.0, float),  # seconds between adverts on the LAN
    discovery_timeout=Key(3.0, float),  # seconds a call may spend finding and connecting to an instance
    exact_locations=Key(None),  # static locations, for networks without broadcast: {"cage": ("host:port", ...)}
    use_pickle=Key(False, bool),  # pickle instead of msgpack: only where every cage is trusted with code
    max_frame_size=Key(DEFAULT_LIMIT, int),  # bytes: the largest call or answer accepted
    busy_wait=Key(BUSY_WAIT, busywait.limit),  # seconds a connection polls for what comes next before it sleeps
    # across networks: NATS (rpc/bus.py, docs/nats/)
    transport=Key("direct", str),  # "nats": calls between cages are NATS requests
    nats_servers=Key(("nats://127.0.0.1:4222",), names),  # URLs of the NATS cluster's servers
    nats_tls=Key(None, _nats_tls),  # "cluster": TLS with this cage's certificate and the cluster CA
    nats_user=Key(None, str),
    nats_password=Key(None, str),
    nats_token=Key(None, str),
    nats_creds=Key(None, str),  # a .creds file (JWT and NKey seed)
    nats_connect_timeout=Key(5.0, float),  # seconds a cage waits for NATS at start (then it keeps trying)
    retry_store=Key("local", str),  # "jetstream": retried calls are kept in the flock's JetStream stream
    jetstream_replicas=Key(1, int),  # of the flock's stream: 3 on a 3-node NATS cluster
    jetstream_duplicate_window=Key(120.0, float),  # seconds JetStream drops a retried call published again
)


class Cluster:
    def __init__(self, loader: Loader) -> None:
        config = read_settings(loader, "cluster", KEYS)
        self.cage, self.node = loader.cage, loader.node
        self.flock: str = config["flock_id"]
        if not CAGE_NAME.fullmatch(self.flock):
            raise ConfigError(f"config_cluster.py: flock_id {self.flock!r}: 1 to 32 of A-Z a-z 0-9 _ -")
        self.discovery_timeout: float = config["discovery_timeout"]
        self.use_pickle: bool = config["use_pickle"]
        self.max_frame_size: int = config["max_frame_size"]
        self.busy_wait: float = config["busy_wait"]
        cages_dir = os.path.dirname(loader.shared_dir)
        self.keys = ClusterKeys.ensure(keys_folder(cages_dir, config["ssl_keys_dir"]), self.flock, self.cage)
        self.client_context: ssl.SSLContext = self.keys.client_context()
        self.locator = Locator(cages_dir=cages_dir, flock=self.flock, cage=self.cage, node=self.node,
                               hmac_key=self.keys.hmac_key, broadcast_address=config["broadcast_address"],
                               advertise_period=config["advertise_period"],
                               exact_locations=config["exact_locations"])
        self.reverse = ReverseCalls()
        # This cage's calls to other cages by target, and the connections those made at the
        # same time share (protocols/rpc.py); each has close(), called when the cluster stops.
        self.links: dict[str, Any] = {}
        self.settings: dict[str, Any] = config
        self.transport: str = config["transport"]
        self.retry_store: str = config["retry_store"]
        if self.transport not in TRANSPORTS or self.retry_store not in RETRY_STORES:
            raise ConfigError(f"config_cluster.py: transport is one of {', '.join(TRANSPORTS)}, "
                              f"retry_store one of {', '.join(RETRY_STORES)}")
        self.sealer = Sealer(self.keys, self.flock, self.cage, max_body=self.max_frame_size) \
            if self.transport == "nats" else None
        self.bus: Bus | None = None
        if self.transport == "nats" or self.retry_store == "jetstream":
            self.bus = Bus(config, name=f"{self.node}.{self.cage}", tls=self._nats_context(config["nats_tls"]),
                           label=f"cluster: cage {self.cage} of flock {self.flock}",
                           calls=self.transport == "nats", jetstream=self.retry_store == "jetstream")
            self.bus.start(config["nats_connect_timeout"])
        self.locator.start()

    def _nats_context(self, tls: str | dict[str, str] | None) -> ssl.SSLContext | None:
        if tls is None:
            return None
        if tls == "cluster":
            return self.client_context
        assert isinstance(tls, dict)
        context = ssl.create_default_context(cafile=tls.get("ca_file"))
        if "cert_file" in tls:
            context.load_cert_chain(tls["cert_file"], tls.get("key_file"))
        return context

    def subject(self, cage: str) -> str:
        """The NATS subject of calls to `cage` (transport "nats")."""
        return f"pmnc.{self.flock}.call.{cage}"

    def stop(self) -> None:
        for link in list(self.links.values()):
            link.close()
        self.locator.stop()
        self.reverse.stop()
        if self.bus is not None:
            self.bus.stop()


class ClusterHandle:
    """The cage's Cluster, made on first use (the rpc interface starting, or the first call
    to another cage) between `start()` and `stop()` of the cage."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._cluster: Cluster | None = None
        self._running = False

    def start(self) -> None:
        with self._lock:
            self._running = True

    def stop(self) -> None:
        with self._lock:
            cluster, self._cluster, self._running = self._cluster, None, False
        if cluster is not None:
            cluster.stop()

    def settings(self) -> dict[str, Any]:
        """config_cluster.py as it is now, read without making the cluster (retry.py asks where
        retried calls are kept before any call to another cage is made)."""
        return read_settings(self._loader, "cluster", KEYS)

    def get(self) -> Cluster:
        cluster = self._cluster
        if cluster is not None:
            return cluster
        with self._lock:
            if self._cluster is None:
                if not self._running:
                    raise ResourceError("cage-to-cage calls need a running cage", recoverable=True, terminal=False)
                self._cluster = Cluster(self._loader)
                log.message(f"cluster: cage {self._loader.cage} of flock {self._cluster.flock}, "
                            f"keys in {self._cluster.keys.folder}")
            return self._cluster
