#!/usr/bin/env python3
# The greeting __module_loader__.before_reload substitutes for greeting.py.

__all__ = [ "text" ]

def text():
    return "the substitute greeting from alternatives/"

# EOF
