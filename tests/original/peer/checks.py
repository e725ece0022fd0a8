#!/usr/bin/env python3
# Checks other cages ask this one to make.

__all__ = [ "validate" ]

def validate(amount: int) -> int:
    if amount <= 0:
        raise ValueError("amount must be positive, not {0:d}".format(amount))
    return amount

# EOF
