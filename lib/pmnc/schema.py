"""Config schemas: the keys a config file may hold, with their defaults and types, in one place.

    KEYS = Schema(max_connections=Key(100, int), ssl_ciphers=Key(None, str))
    settings = KEYS.read(config, "config_interface_http.py")  # every key, defaults filled in
    settings["max_connections"]                                # 100, or the config's, as an int

A key the schema does not know is refused with a ConfigError naming the
file and the key (and the closest known key): a typo must not pass
silently. A protocol's schema extends its base's (`Interface.keys.extend(...)`).

A key the original framework had in this file but pmnc keeps elsewhere, or has
dropped, is `moved`: refused with a message saying where it lives now, so a
config written for the original is never silently half-read:

    Schema(..., moved={"broadcast_address": "config_cluster.py"})
    # ConfigError: config_interface_rpc.py: key broadcast_address now lives in config_cluster.py

A key honoured with a caveat has a `note`: given the value from the file, the
text to log (once per process, file and key), or None.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from pmnc import log
from pmnc.errors import ConfigError
from pmnc.placement import cpu_set


class Key(NamedTuple):
    """One key: its default, and the conversion a value given in the file goes
    through (int, float, ...). None stays None where the default is None."""

    default: Any = None
    convert: Callable[[Any], Any] | None = None
    note: Callable[[Any], str | None] | None = None  # the converted value -> a line to log once, or None


class Schema(Mapping[str, Key]):
    """The keys of one kind of config file; read() turns a config dict into its settings.
    `moved` maps keys this file no longer holds to where they live now."""

    def __init__(self, *, moved: Mapping[str, str] | None = None, **keys: Key) -> None:
        self._keys = keys
        self._moved = dict(moved or {})
        both = set(keys) & set(self._moved)
        assert not both, f"keys both known and moved: {both}"

    @property
    def moved(self) -> Mapping[str, str]:
        return self._moved

    def extend(self, *, moved: Mapping[str, str] | None = None, **keys: Key) -> Schema:
        """This schema's keys and more (a key given again takes its new default and conversion;
        a key given now is no longer moved, a key moved now is no longer known)."""
        moved = dict(moved or {})
        return Schema(moved={k: v for k, v in {**self._moved, **moved}.items() if k not in keys},
                      **{k: v for k, v in {**self._keys, **keys}.items() if k not in moved})

    def __or__(self, other: Schema) -> Schema:
        """Both schemas' keys (a protocol's connection keys shared by its interface and resource);
        where both have a key, `other`'s."""
        joined = Schema(moved={k: v for k, v in {**self._moved, **other.moved}.items() if k not in other})
        joined._keys = {k: v for k, v in {**self._keys, **other._keys}.items() if k not in other.moved}
        return joined

    def read(self, config: Mapping[str, Any], file: str) -> dict[str, Any]:
        """Every key of the schema, from `config` or its default; `config` is left as it was."""
        moved = [k for k in config if k in self._moved]
        if moved:
            raise ConfigError(f"{file}: " + "; ".join(_moved_text(k, self._moved[k]) for k in moved))
        unknown = sorted(k for k in config if k not in self._keys)
        if unknown:
            raise ConfigError(f"{file}: {self._unknown(unknown)}")
        settings = {key: self._value(file, key, config) for key in self._keys}
        for key in config:
            note = self._keys[key].note
            if note is not None:
                _note_once(file, key, note(settings[key]))
        return settings

    def _value(self, file: str, key: str, config: Mapping[str, Any]) -> Any:
        default, convert, _ = self._keys[key]
        if key not in config:
            return default
        value = config[key]
        if convert is None or (value is None and default is None):
            return value
        try:
            return convert(value)
        except (TypeError, ValueError):
            expected = _EXPECTED.get(convert) or getattr(convert, "expected", None) or \
                getattr(convert, "__name__", "valid")
            raise ConfigError(f"{file}: {key} must be {expected}, not {value!r}") from None

    def _unknown(self, keys: list[str]) -> str:
        hints = [(key, difflib.get_close_matches(key, self._keys, n=1)) for key in keys]
        hints = [(key, close) for key, close in hints if close]
        if len(keys) == 1:
            text = f"unknown config key: {keys[0]}"
            return text + (f" (did you mean {hints[0][1][0]}?)" if hints else "")
        text = f"unknown config keys: {', '.join(keys)}"
        return text + (f" (did you mean {', '.join(f'{c[0]} for {k}' for k, c in hints)}?)" if hints else "")

    def __getitem__(self, key: str) -> Key:
        return self._keys[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"<Schema {', '.join(self._keys)}>"


def _moved_text(key: str, where: str) -> str:
    """`where` is a config file (and more words), or why pmnc has no such key."""
    if where.startswith("config_"):
        return f"key {key} now lives in {where}"
    return f"key {key} is not used by pmnc: {where}"


_noted: set[tuple[str, str, str]] = set()  # (file, key, text) already logged


def _note_once(file: str, key: str, text: str | None) -> None:
    """A caveat about a key, logged once per process: config files are read per connection."""
    if text is None or (file, key, text) in _noted:
        return
    _noted.add((file, key, text))
    log.warning(f"{file}: {key}: {text}")


def ssl_protocol_ignored(value: Any) -> str | None:
    """The note of the original's `ssl_protocol` key: pmnc chooses the protocol itself."""
    if value is None:
        return None
    return f"{value!r} is not used: pmnc speaks TLS 1.2 or later (remove the key)"


def names(value: Any) -> tuple[str, ...]:
    """A conversion: one name (or pattern), or a list of them, as a tuple of strings."""
    return (str(value),) if isinstance(value, str) else tuple(str(v) for v in value)


def address(value: Any) -> tuple[str, int]:
    """A conversion: (host, port)."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError("not (host, port)")
    return str(value[0]), int(value[1])


_EXPECTED: dict[Callable[[Any], Any], str] = {address: "(host, port)", names: "a name or a list of names"}


def interface_file(name: str) -> str:
    return f"config_interface_{name}.py"


def resource_file(name: str) -> str:
    """The file of resource instance `db/3` (or of pool `a__b`, whose connections read config_resource_a.py)."""
    return f"config_resource_{name.partition('/')[0].partition('__')[0]}.py"


# The keys pools.py gives every resource besides its config file's own: for a pool
# named `a__b` (config_resource_a.py), the "b". Resource schemas extend this one.
RESOURCE_KEYS = Schema(resource_name=Key(None, str))

# The pool__* keys of config_resource_<name>.py, read by pools.py (defaults as the original's).
POOL_KEYS = Schema(
    pool__size=Key(None, int),  # threads, and connections up to size + 2 (None: the cage's thread_count)
    pool__standby=Key(0, int),  # connections kept connected while idle
    pool__idle_timeout=Key(30.0, float),  # an unused connection is closed after this
    pool__max_age=Key(300.0, float),  # any connection is closed after this
    pool__min_time=Key(0.0, float),  # a call with less time left is declined
    pool__max_time=Key(None, float),  # a call may take at most this (None: no limit)
    # a cache of call results, when pool__cache_size is set (cache.ResultCache)
    pool__cache_size=Key(None, int),  # entries kept (None or 0: no cache)
    pool__cache_policy=Key(None, str),  # what goes first: lru (None) lfu weight useless old random
    pool__cache_default_ttl=Key(None, float),  # seconds an entry lives (None: until evicted)
    pool__cache_evict_period=Key(None, float),  # seconds between evictions (None: 10.0)
    pool__cache_group_interval=Key(None, float),  # seconds of hits a pool__cache_group is valued by
)


# --- the framework's own config files ----------------------------------------------------------

# config_interfaces.py: the cage's own settings (read by cage.py, interfaces.py, rpc/calls.py).
# config_state.py and config_cluster.py have theirs in state.py and rpc/cluster.py.
INTERFACES_KEYS = Schema(
    interfaces=Key((), tuple),  # names of the interfaces to run, each with its config_interface_<name>.py
    request_timeout=Key(10.0, float),  # seconds every request gets, from its first byte to its answer
    thread_count=Key(10, int),  # worker threads: how many requests run at once
    sweep_period=Key(15.0, float),  # seconds between sweeps of resource pools
    log_level=Key("LOG", str),  # ERROR MESSAGE WARNING LOG INFO DEBUG NOISE; read every second
    statistics=Key(True, bool),  # count requests and resource calls (monitor/stats.py); read every second
    cpu_affinity=Key("auto", cpu_set),  # "auto" (one CPU, the idlest), (0,), None (the system's); read every second
)
