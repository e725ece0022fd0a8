"""The original's `typecheck` import path, over pmnc.typecheck and pmnc.errors.

`import typecheck; from typecheck import typecheck, optional` in code written
for Pythomnic3k gets pmnc's one checker: an InputParameterError raised here
is pmnc.errors.InputParameterError, the class pmnc's loader raises.
"""

import builtins

from pmnc import typecheck as _checker
from pmnc.errors import InputParameterError, ReturnValueError, TypeCheckError, TypeCheckSpecificationError
from pmnc.typecheck import *  # noqa: F403 - every name of pmnc's checker, as the original offered them

# The original exported a `callable` predicate; the builtin is the same check.
callable = builtins.callable

__all__ = [*_checker.__all__, "InputParameterError", "ReturnValueError", "TypeCheckError",
           "TypeCheckSpecificationError", "callable"]
