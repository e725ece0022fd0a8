#!/usr/bin/env python3
# A module whose __all__ also names a constant: the constant cannot be used
# through pmnc, the function can.

__all__ = [ "works", "LIMIT" ]

LIMIT = 3

def works():
    return "works, limit {0:d}".format(LIMIT)

# EOF
