"""The void resource: a participant that does nothing, for tests and examples.

    pmnc.transaction.void.success("a", b=1)          # (("a",), {"b": 1})
    pmnc.transaction.void.failure()                  # ResourceError("failure")
    pmnc.transaction.void.execute(f, 1, x=2)         # f(1, x=2), on a thread of void's pool

It is transactional, with nothing to commit or roll back, and preparable (there is nothing to
lose in a crash), so it may be any participant of any transaction, two-phase ones too. Its
calls run on its pool's threads like a real resource's, so it exercises the pool settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pmnc import resource as _resource
from pmnc.errors import ResourceError
from pmnc.schema import RESOURCE_KEYS, resource_file

__all__ = ["Resource"]


class Resource(_resource.Resource):
    transactional = True
    preparable = True

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, RESOURCE_KEYS.read(config, resource_file(name)))

    def success(self, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    def failure(self) -> None:
        raise ResourceError("failure")  # as the original's: unrecoverable

    def execute(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return f(*args, **kwargs)

    # --- two-phase commit: nothing was done, so nothing is left in doubt ----------------------

    def prepare(self) -> None:
        pass

    def in_doubt(self, prefix: str) -> list[str]:
        return []

    def finish_prepared(self, branch: str, commit: bool) -> None:
        pass

# EOF
