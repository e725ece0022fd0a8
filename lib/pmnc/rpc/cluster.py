"""The cage's place in its cluster: config_cluster.py, the keys, the locator, reverse calls.

Made on first use (the rpc interface starting, or the first call to another
cage) and stopped with the cage. One cage runs per process, so there is one.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import TYPE_CHECKING

from pmnc import log
from pmnc.config import Config
from pmnc.errors import ConfigError, ResourceError
from pmnc.rpc.codec import DEFAULT_LIMIT
from pmnc.rpc.identity import CAGE_NAME, ClusterKeys, keys_folder
from pmnc.rpc.locator import Locator
from pmnc.rpc.reverse import ReverseCalls

if TYPE_CHECKING:
    from pmnc.loader import Loader


class Cluster:
    def __init__(self, loader: Loader) -> None:
        config = Config(loader, "cluster").copy()
        take = config.pop
        self.cage, self.node = loader.cage, loader.node
        self.flock = str(take("flock_id", "DEFAULT"))
        if not CAGE_NAME.fullmatch(self.flock):
            raise ConfigError(f"config_cluster.py: flock_id {self.flock!r}: 1 to 32 of A-Z a-z 0-9 _ -")
        self.discovery_timeout = float(take("discovery_timeout", 3.0))
        self.use_pickle = bool(take("use_pickle", False))
        self.max_frame_size = int(take("max_frame_size", DEFAULT_LIMIT))
        cages_dir = os.path.dirname(loader.shared_dir)
        self.keys = ClusterKeys.ensure(keys_folder(cages_dir, take("ssl_keys_dir", None)), self.flock, self.cage)
        self.client_context: ssl.SSLContext = self.keys.client_context()
        self.locator = Locator(cages_dir=cages_dir, flock=self.flock, cage=self.cage, node=self.node,
                               hmac_key=self.keys.hmac_key, broadcast_address=take("broadcast_address", None),
                               advertise_period=float(take("advertise_period", 5.0)),
                               exact_locations=take("exact_locations", None))
        self.reverse = ReverseCalls()
        self.locator.start()

    def stop(self) -> None:
        self.locator.stop()
        self.reverse.stop()


_lock = threading.Lock()
_cluster: Cluster | None = None
_loader: Loader | None = None


def attach(loader: Loader | None) -> None:
    """The cage (its loader) whose cluster `get()` makes; None when it stops."""
    global _loader, _cluster
    with _lock:
        cluster, _cluster, _loader = _cluster, None, loader
    if cluster is not None:
        cluster.stop()


def get() -> Cluster:
    global _cluster
    cluster = _cluster
    if cluster is not None:
        return cluster
    with _lock:
        if _cluster is None:
            if _loader is None:
                raise ResourceError("cage-to-cage calls need a running cage", recoverable=True, terminal=False)
            _cluster = Cluster(_loader)
            log.message(f"cluster: cage {_loader.cage} of flock {_cluster.flock}, keys in {_cluster.keys.folder}")
        return _cluster


def peek() -> Cluster | None:
    return _cluster
