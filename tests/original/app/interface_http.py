#!/usr/bin/env python3
###############################################################################
#
# The pages that drive module idioms: GET /<function>?<arg>&<arg> calls
# pmnc.idioms.<function>(<arg>, ...) and answers what it returned as JSON
# (numbers among the arguments are passed as int).
#
###############################################################################

__all__ = [ "process_request" ]

###############################################################################

import json; from json import dumps as json_dumps

import typecheck; from typecheck import by_regex

valid_function = by_regex("^[a-z_]+$")

###############################################################################

def _argument(text):
    return int(text) if text.lstrip("-").isdigit() else text

def process_request(request: dict, response: dict):

    path, _, query = request["url"].partition("?")
    function = path.strip("/")
    if not valid_function(function):
        raise ValueError("no such page: {0:s}".format(path))

    args = [ _argument(arg) for arg in query.split("&") if arg ]
    result = getattr(pmnc.idioms, function)(*args)

    response["headers"]["content-type"] = "text/plain"
    response["content"] = json_dumps(result)

###############################################################################
# EOF
