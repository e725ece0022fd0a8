"""The original's `typecheck` import path, over pmnc.typecheck and pmnc.errors.

`import typecheck; from typecheck import typecheck, optional` in code written
for Pythomnic3k gets pmnc's one checker: an InputParameterError raised here
is pmnc.errors.InputParameterError, the class pmnc's loader raises.
"""

import builtins

from pmnc.errors import InputParameterError, ReturnValueError, TypeCheckError, TypeCheckSpecificationError
from pmnc.typecheck import (
    anything,
    by_regex,
    dict_of,
    disable,
    either,
    list_of,
    nothing,
    one_of,
    optional,
    set_of,
    tuple_of,
    typecheck,
    typecheck_with_exceptions,
    with_attr,
)

# The original exported a `callable` predicate; the builtin is the same check.
callable = builtins.callable

__all__ = [
    "InputParameterError",
    "ReturnValueError",
    "TypeCheckError",
    "TypeCheckSpecificationError",
    "anything",
    "by_regex",
    "callable",
    "dict_of",
    "disable",
    "either",
    "list_of",
    "nothing",
    "one_of",
    "optional",
    "set_of",
    "tuple_of",
    "typecheck",
    "typecheck_with_exceptions",
    "with_attr",
]
