#!/usr/bin/env python3
# A module without a fixed list of functions: any name it is asked for is a
# function that says who asked for it.

__all__ = [ "__get_module_attr__" ]

def __get_module_attr__(name, *, __source_module_name):
    def answer(*args):
        return "{0:s}.{1:s}{2} asked by {3:s}".format(__name__, name, args, __source_module_name)
    return answer

# EOF
