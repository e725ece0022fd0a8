"""The cage's place in its cluster: config_cluster.py, the keys, the locator, reverse calls.

The runtime holds its `ClusterHandle`: the cluster is made on first use (the rpc
interface starting, or the first call to another cage) and stopped with the cage.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import TYPE_CHECKING

from pmnc import log
from pmnc.config import read_settings
from pmnc.errors import ConfigError, ResourceError
from pmnc.rpc.codec import DEFAULT_LIMIT
from pmnc.rpc.identity import CAGE_NAME, ClusterKeys, keys_folder
from pmnc.rpc.locator import Locator
from pmnc.rpc.reverse import ReverseCalls
from pmnc.schema import Key, Schema

if TYPE_CHECKING:
    from pmnc.loader import Loader


KEYS = Schema(  # of config_cluster.py
    flock_id=Key("DEFAULT", str),  # cages see and call only cages of the same flock
    ssl_keys_dir=Key(None, str),  # None: cages/.shared/ssl_keys (made if missing)
    broadcast_address=Key(None),  # LAN discovery: ("<bind ip>/<broadcast ip>", port); None: this machine only
    advertise_period=Key(5.0, float),  # seconds between adverts on the LAN
    discovery_timeout=Key(3.0, float),  # seconds a call may spend finding and connecting to an instance
    exact_locations=Key(None),  # static locations, for networks without broadcast: {"cage": ("host:port", ...)}
    use_pickle=Key(False, bool),  # pickle instead of msgpack: only where every cage is trusted with code
    max_frame_size=Key(DEFAULT_LIMIT, int),  # bytes: the largest call or answer accepted
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
        cages_dir = os.path.dirname(loader.shared_dir)
        self.keys = ClusterKeys.ensure(keys_folder(cages_dir, config["ssl_keys_dir"]), self.flock, self.cage)
        self.client_context: ssl.SSLContext = self.keys.client_context()
        self.locator = Locator(cages_dir=cages_dir, flock=self.flock, cage=self.cage, node=self.node,
                               hmac_key=self.keys.hmac_key, broadcast_address=config["broadcast_address"],
                               advertise_period=config["advertise_period"],
                               exact_locations=config["exact_locations"])
        self.reverse = ReverseCalls()
        self.locator.start()

    def stop(self) -> None:
        self.locator.stop()
        self.reverse.stop()


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
