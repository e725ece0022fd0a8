"""The original's `exc_string` import path, over pmnc.errors.

`exc_string()` is the current exception on one line, innermost frame first;
`trace_string(skip=)` the calling stack in the same form.
"""

from pmnc.errors import exc_string, trace_string

__all__ = ["exc_string", "trace_string"]
