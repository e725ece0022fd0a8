"""Config modules: `pmnc.config.get(key, default)` in module `x` reads `config_x`.

A config file `config_x.py` is an ordinary reloadable cage module (it needs
its `# EOF` line) holding `config = dict(...)` and optionally
`self_test_config = dict(...)`, whose keys win in self-test mode. Strings
are expanded: `$name` from `config_config`'s `config` plus `__node__`,
`__cage__` and `__cage_dir__` (unknown `$x` kept, `$$` → `$`), and a string
`"eval(...)"` is evaluated after expansion, to produce non-string values.

A config file written for the original exports its own `get` / `copy` (lambdas calling
back `pmnc.config.get_(config, self_test_config, key, default)` / `copy_`): those are
honoured, so a file that fetches its values elsewhere keeps doing so. A missing key
without a default is None, as in the original.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from string import Template
from typing import Any

from pmnc.errors import ConfigError
from pmnc.loader import Loader, ModuleVersion
from pmnc.schema import Schema

_OWN = ("get", "copy")  # what an original config file exports itself


class Config:
    """The view of one config module; values are expanded when first asked
    for, and cached until the config file (or config_config) changes."""

    def __init__(self, loader: Loader, target: str) -> None:
        self._loader = loader
        self._target = target
        self.module = "config_" + target
        self._cache: _Cache | None = None

    @property
    def version(self) -> int:
        return self._loader.version_number(self.module)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key` in this module's config file, expanded; `default` (expanded
        too) when the file has no such key."""
        cache = self._current()
        if cache.own_get:
            return self._loader.call(self.module, "get", (key, default), {}, source=self._target)
        if key in cache.raw:
            if key not in cache.expanded:
                cache.expanded[key] = self._expand(cache.raw[key], cache.variables)
            return copy.deepcopy(cache.expanded[key])
        return self._expand(default, cache.variables)

    def copy(self) -> dict[str, Any]:
        cache = self._current()
        if cache.own_copy:
            values = self._loader.call(self.module, "copy", (), {}, source=self._target)
            if not isinstance(values, dict):
                raise ConfigError(f"{self.module}.py: its copy() must return a dict")
            return values
        return {key: self.get(key) for key in cache.raw}

    # --- what an original config file calls back ------------------------------------

    def get_(self, config: dict[str, Any], self_test_config: dict[str, Any], key: str, default: Any = None) -> Any:
        """`pmnc.config.get_(config, self_test_config, key, default)` in config file `X.py`
        (whose `pmnc.config` this is): the value of `key`, the self-test one in a self-test."""
        if self._loader.self_test is not None and key in self_test_config:
            value = self_test_config[key]
        else:
            value = config.get(key, default)
        return self._expand_for_file(value)

    def copy_(self, config: dict[str, Any], self_test_config: dict[str, Any]) -> dict[str, Any]:
        values = dict(config)
        if self._loader.self_test is not None:
            values.update(self_test_config)
        return {key: self._expand_for_file(value) for key, value in values.items()}

    def _expand_for_file(self, value: Any) -> Any:
        # this is the pmnc.config of the config file itself; config_config is never expanded
        if self._target == "config_config":
            return value
        return self._expand(value, self._variables(of=self._target))


    def _current(self) -> _Cache:
        current = self._loader.current(self.module)
        version = current.number, self._variables_version()
        if self._cache is None or self._cache.version != version:
            # a file written for the original exports its own get / copy: they are what answer
            self._cache = _Cache(version, self._raw(), self._variables(),
                                 own_get="get" in current.attrs, own_copy="copy" in current.attrs)
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

    def _variables(self, of: str | None = None) -> dict[str, Any]:
        loader = self._loader
        variables: dict[str, Any] = {}
        if (of or self.module) != "config_config" and loader.locate("config_config", cached=True) is not None:
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
    own_get: bool = False
    own_copy: bool = False
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
