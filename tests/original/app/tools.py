#!/usr/bin/env python3
###############################################################################
#
# Helpers whose calls show what the module loader gives a function: who
# called it, the attributes after its name, the module of a class.
#
###############################################################################

__all__ = [ "caller", "route", "Tally", "hooked", "ping" ]

###############################################################################

def caller(*, __source_module_name):
    return __source_module_name

def route(prefix, *, __call_attributes):
    return "/".join([ prefix ] + __call_attributes)

def hooked():
    return globals().get("loaded_through_hooks", False) # set by __module_loader__.after_reload

def ping():
    return "pong"

###############################################################################

class Tally:

    def __init__(self, start = 0):
        self._count = start

    def add(self, n = 1):
        self._count += n
        return self._count

###############################################################################
# EOF
