#!/usr/bin/env python3
# The greeting as it is in the cage folder; __module_loader__ loads
# alternatives/greeting.py in its place.

__all__ = [ "text" ]

def text():
    return "the cage folder's greeting"

# EOF
