"""Config modules: `pmnc.config.get(key, default)` in module `x` reads `config_x`.

A config file `config_x.py` is an ordinary reloadable cage module (it needs
its `# EOF` line) holding `config = dict(...)` and optionally
`self_test_config = dict(...)`, whose keys win in self-test mode. Strings
are expanded: `$name` from `config_config`'s `config` plus `__node__`,
`__cage__` and `__cage_dir__` (unknown `$x` kept, `$$` → `$`), and a string
`"eval(...)"` is evaluated after expansion, to produce non-string values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from string import Template
from typing import Any

from pmnc.errors import ConfigError
from pmnc.loader import Loader, ModuleVersion
from pmnc.schema import Schema

_NO_DEFAULT = object()


class Config:
    """The view of one config module; values are expanded when first asked
    for, and cached until the config file (or config_config) changes."""

    def __init__(self, loader: Loader, target: str) -> None:
        self._loader = loader
        self.module = "config_" + target
        self._cache: _Cache | None = None

    @property
    def version(self) -> int:
        return self._loader.version_number(self.module)

    def get(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        cache = self._current()
        if key in cache.raw:
            if key not in cache.expanded:
                cache.expanded[key] = self._expand(cache.raw[key], cache.variables)
            return copy.deepcopy(cache.expanded[key])
        if default is _NO_DEFAULT:
            raise ConfigError(f"{self.module}.py has no key {key!r}")
        return self._expand(default, cache.variables)

    def copy(self) -> dict[str, Any]:
        return {key: self.get(key) for key in self._current().raw}

    def _current(self) -> _Cache:
        version = self._loader.current(self.module).number, self._variables_version()
        if self._cache is None or self._cache.version != version:
            self._cache = _Cache(version, self._raw(), self._variables())
        return self._cache

    def _raw(self) -> dict[str, Any]:
        version = self._loader.current(self.module)
        values = _dict_attr(version, "config")
        if self._loader.self_test is not None:
            values = {**values, **_dict_attr(version, "self_test_config", required=False)}
        return values

    def _variables_version(self) -> int:
        if self.module == "config_config" or self._loader.locate("config_config", cached=True) is None:
            return 0
        return self._loader.version_number("config_config")

    def _variables(self) -> dict[str, Any]:
        loader = self._loader
        variables: dict[str, Any] = {}
        if self.module != "config_config" and loader.locate("config_config", cached=True) is not None:
            variables.update(_dict_attr(loader.current("config_config"), "config"))
        variables.update(__node__=loader.node, __cage__=loader.cage, __cage_dir__=loader.cage_dir)
        return variables

    def _expand(self, value: Any, variables: dict[str, Any]) -> Any:
        if isinstance(value, str):
            text = Template(value).safe_substitute(variables)
            if text.startswith("eval(") and text.endswith(")"):
                try:
                    return eval(text[5:-1], {"__builtins__": __builtins__}, dict(variables))
                except Exception as e:
                    raise ConfigError(f"{self.module}.py: cannot evaluate {text!r}: {e}") from None
            return text
        if isinstance(value, dict):
            return {k: self._expand(v, variables) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return type(value)(self._expand(v, variables) for v in value)
        return value


@dataclass
class _Cache:
    version: tuple[int, int]  # of the config file and of config_config
    raw: dict[str, Any]
    variables: dict[str, Any]
    expanded: dict[str, Any] = field(default_factory=dict)


def read_settings(loader: Loader, target: str, schema: Schema) -> dict[str, Any]:
    """config_<target>.py read against its schema: every key, expanded, defaults filled in
    (all defaults if the file is not there); ConfigError for an unknown key."""
    config = Config(loader, target).copy() if loader.locate(f"config_{target}") is not None else {}
    return schema.read(config, f"config_{target}.py")


def _dict_attr(version: ModuleVersion, attr: str, *, required: bool = True) -> dict[str, Any]:
    value = version.module.__dict__.get(attr)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{version.name}.py must define {attr} = dict(...)")
    return value
