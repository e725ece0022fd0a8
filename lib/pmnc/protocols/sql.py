"""What every SQL resource shares: `{name}` placeholders, rows, value checks.

    rows1, rows2 = xa.db.execute("INSERT INTO t (id, name) VALUES ({id}, {name})",
                                 "SELECT * FROM t WHERE id = {id}", id=1, name="x")

- `execute(*statements, **params)` runs the statements in order in the
  participant's local transaction and returns one list of rows per
  statement (`[]` for one that returns none). A row is a `Row`: a mapping
  with case-insensitive keys that compares equal to a dict.
- `{name}` marks a parameter, bound by the server, never formatted into the
  SQL; `{{` and `}}` are literal braces. A statement gets only the
  parameters it names; a name given no value, a positional `{}` or a format
  spec is refused before anything runs.
- Every parameter is checked before the first statement runs: None, bool,
  int (64-bit), Decimal (within `decimal_precision`), float, str, bytes,
  date, datetime, time, timedelta, and lists of these where the database
  has arrays. A bad one is a ResourceInputParameterError: nothing was sent.
- A Decimal read back beyond `decimal_precision` is an error too (the
  connection is dropped): a number the application cannot hold is not
  silently rounded.

A protocol subclasses `SQLResource` with its placeholder style, its driver
calls and its error mapping.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import string
from collections.abc import Iterator, Mapping
from typing import Any

from pmnc import log, resource
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError
from pmnc.schema import RESOURCE_KEYS, Key, Schema, resource_file

INT64 = (-2 ** 63, 2 ** 63 - 1)
SCALARS = (type(None), bool, int, float, decimal.Decimal, str, bytes, datetime.date, datetime.datetime,
           datetime.time, datetime.timedelta)


class Row(Mapping[str, Any]):
    """One row: keys are column names, looked up regardless of case."""

    __slots__ = ("_by_lower", "_values")

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values
        self._by_lower = {key.lower(): key for key in values}

    def __getitem__(self, key: str) -> Any:
        return self._values[self._by_lower.get(key.lower(), key)] if isinstance(key, str) else self._values[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._by_lower

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            other = other._values
        return self._values == other if isinstance(other, dict) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, as a dict

    def __repr__(self) -> str:
        return f"Row({self._values!r})"


class Statement:
    """One statement split at its `{name}` placeholders."""

    __slots__ = ("_rendered", "names", "occurrences", "parts")

    def __init__(self, sql: str) -> None:
        if not isinstance(sql, str):
            raise ResourceInputParameterError(f"a statement must be a str, not {type(sql).__name__}")
        parts: list[tuple[str, str | None]] = []
        try:
            for literal, name, spec, conversion in string.Formatter().parse(sql):
                if name is not None and (not name.isidentifier() or spec or conversion):
                    raise ResourceInputParameterError(f"placeholder {{{name}{'!' + conversion if conversion else ''}"
                                                      f"{':' + spec if spec else ''}}} is not a {{name}}")
                parts.append((literal, name))
        except ValueError as e:
            raise ResourceInputParameterError(f"statement has unbalanced braces: {e}") from None
        self.parts = parts
        self.occurrences = tuple(name for _, name in parts if name is not None)  # in order, repeats kept
        self.names = tuple(dict.fromkeys(self.occurrences))
        self._rendered: dict[tuple[str, bool], str] = {}

    def render_as(self, style: str, placeholder: Any, escape_percent: bool = False) -> str:
        """`render`, remembered per `style` (the name of a driver's placeholder style)."""
        key = (style, escape_percent)
        text = self._rendered.get(key)
        if text is None:
            text = self._rendered[key] = self.render(placeholder, escape_percent)
        return text

    def render(self, placeholder: Any, escape_percent: bool = False) -> str:
        """The SQL with each `{name}` replaced by `placeholder(name)`."""
        chunks = []
        for literal, name in self.parts:
            chunks.append(literal.replace("%", "%%") if escape_percent else literal)
            if name is not None:
                chunks.append(placeholder(name))
        return "".join(chunks)


@functools.lru_cache(maxsize=1024)
def _parse(sql: str) -> Statement:
    return Statement(sql)


def parse(sql: Any) -> Statement:
    """The statement, parsed once per distinct text (statements repeat)."""
    return _parse(sql) if isinstance(sql, str) else Statement(sql)


# The keys every SQL resource's config_resource_<name>.py may hold; a protocol extends them.
SQL_KEYS = RESOURCE_KEYS.extend(decimal_precision=Key((28, 8)))  # (precision, scale) a Decimal must fit


class SQLResource(resource.Resource):
    """The base of SQL resources; subclasses implement `_run(statement, params)`."""

    transactional = True
    arrays = False  # lists bind as arrays (PostgreSQL)
    has_time = True  # datetime.time binds

    def __init__(self, name: str, config: dict[str, Any], keys: Schema = SQL_KEYS) -> None:
        """Reads `config` against `keys` (the protocol's, extending SQL_KEYS) into `self.config`."""
        super().__init__(name, config)
        self.config = keys.read(config, resource_file(name))
        precision = self.config["decimal_precision"]
        try:
            digits, scale = (int(x) for x in precision)
            if not 0 < digits <= 1000 or not 0 <= scale <= digits:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"resource {name}: decimal_precision must be (precision, scale), "
                              f"not {precision!r}") from None
        self.decimal_precision = (digits, scale)
        self._decimal_max = decimal.Decimal(10) ** (digits - scale) - decimal.Decimal(1).scaleb(-scale)
        self._decimal_step = decimal.Decimal(1).scaleb(-scale)

    def execute(self, *statements: str, **params: Any) -> tuple[list[Row], ...]:
        parsed = [parse(sql) for sql in statements]
        for statement in parsed:
            for name in statement.names:
                if name not in params:
                    raise ResourceInputParameterError(f"no value for the parameter {{{name}}}")
        checked = {name: self.check_value(name, value) for name, value in params.items()}
        results = []
        for statement in parsed:
            used = {name: checked[name] for name in statement.names}
            if log.enabled(log.INFO):
                log.info(f"{self.name}: {statement.render(lambda n: '{' + n + '}')}")
                if used and log.enabled(log.DEBUG):
                    log.debug(f"{self.name}: parameters {used!r}")
            rows = self._run(statement, used)
            results.append([Row({k: self._check_result(k, v) for k, v in row.items()}) for row in rows])
        return tuple(results)

    def _run(self, statement: Statement, params: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    # --- values ----------------------------------------------------------------------------

    def check_value(self, name: str, value: Any) -> Any:
        if isinstance(value, list):
            if not self.arrays:
                raise ResourceInputParameterError(f"parameter {name}: lists are not supported here")
            return [self.check_value(name, item) for item in value]
        if not isinstance(value, SCALARS) or (isinstance(value, datetime.time) and not self.has_time):
            raise ResourceInputParameterError(f"parameter {name}: type {type(value).__name__} is not supported")
        if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
            raise ResourceInputParameterError(f"parameter {name}: {value} is out of the 64-bit integer range")
        if isinstance(value, decimal.Decimal):
            self._check_decimal(value, f"parameter {name}", ResourceInputParameterError)
        return value

    def _check_result(self, column: str, value: Any) -> Any:
        if isinstance(value, decimal.Decimal):
            self._check_decimal(value, f"column {column}", _unrepresentable)
        return value

    def _check_decimal(self, value: decimal.Decimal, what: str, error: Any) -> None:
        if not value.is_finite():
            raise error(f"{what}: {value} is not a finite number")
        if abs(value) > self._decimal_max or value != value.quantize(self._decimal_step):
            raise error(f"{what}: {value} does not fit decimal_precision {self.decimal_precision}")


def _unrepresentable(description: str) -> ResourceError:
    return ResourceError(description, recoverable=False, terminal=True)
