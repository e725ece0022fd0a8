"""One module per protocol, each defining `Interface` and/or `Resource`;
a cage may add or replace one with its own `protocol_<name>.py`."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TypeVar

from pmnc.errors import ConfigError

if TYPE_CHECKING:
    from pmnc.loader import Loader

T = TypeVar("T")


def protocol_class(loader: Loader, protocol: Any, kind: str, base: type[T], user: str) -> type[T]:
    """`pmnc.protocols.<protocol>.<kind>`, or the cage's own `protocol_<protocol>.py`
    (which wins, so a cage can add or replace a protocol)."""
    if not isinstance(protocol, str) or not protocol.isidentifier():
        raise ConfigError(f"{user} must name a protocol in its config file")
    if loader.locate(f"protocol_{protocol}") is not None:
        namespace = loader.current(f"protocol_{protocol}").module.__dict__
    else:
        try:
            namespace = importlib.import_module(f"pmnc.protocols.{protocol}").__dict__
        except ImportError:
            raise ConfigError(f"protocol {protocol!r} of {user} is not known") from None
    cls = namespace.get(kind)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"protocol {protocol!r} of {user} has no {kind.lower()} side")
    return cls
