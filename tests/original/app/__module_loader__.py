#!/usr/bin/env python3
###############################################################################
#
# Consulted by the module loader around the loading of every other module:
# a module with a file of its name under alternatives/ is loaded from there,
# and every module loaded is marked so that it can tell.
#
###############################################################################

__all__ = []

import os; from os import path as os_path

def before_reload(module_name, file_name, source_module):
    alternative = os_path.join(__cage_dir__, "alternatives", module_name + ".py")
    return alternative if os_path.isfile(alternative) else file_name

def after_reload(module):
    module.loaded_through_hooks = True

# EOF
