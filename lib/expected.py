"""The original's `expected` import path: the assertion its self-tests are written with.

pmnc has no counterpart (its own tests use pytest.raises), so the helper is
here, for module self-tests and cage code written the original way:

    with expected(KeyError): ...                 # that type (or a subclass)
    with expected(KeyError("'k")): ...            # and a message starting with this text
    with expected(KeyError, "'k[0-9]+'"): ...     # and a message matching this whole regex

Nothing raised fails with AssertionError("expected KeyError to have been
thrown"); an exception of another type, or with another message, goes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import TracebackType

__all__ = ["expected"]

USAGE = 'usage: with expected(Exception[, "regex"]): or with expected(Exception("text")):'


class expected:  # lower case: the original's name, used like a function
    def __init__(self, error: type[Exception] | Exception, regex: str | None = None) -> None:
        self._type, self._matches = self._parse(error, regex)

    @staticmethod
    def _parse(error: object, regex: object) -> tuple[type[BaseException], Callable[[str], bool]]:
        if isinstance(error, Exception) and regex is None:
            prefix = str(error)
            return type(error), lambda text: text.startswith(prefix)
        if isinstance(error, type) and issubclass(error, Exception) and regex is None:
            return error, lambda text: True
        if isinstance(error, type) and issubclass(error, Exception) and isinstance(regex, str):
            pattern = re.compile(f"(?:{regex})")
            return error, lambda text: pattern.fullmatch(text) is not None
        raise Exception(USAGE)  # the original's bare Exception: its self-test compares the text

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if kind is None:
            raise AssertionError(f"expected {self._type.__name__} to have been thrown")
        return issubclass(kind, self._type) and self._matches(str(value))
