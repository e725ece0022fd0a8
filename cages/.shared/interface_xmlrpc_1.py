# The handler of an XML-RPC interface: called on a worker thread for each call.
#
# request  = {"method": "dotted.name", "args": (...)}  (XML-RPC has no keyword arguments)
# response = {"result": None}  set "result"; an exception becomes a Fault with code 500
#
# Arguments arrive as Python types: int, bool, str, float, bytes (base64),
# datetime.datetime (dateTime.iso8601), list, dict, and None if the client sends <nil/>.
# pmnc.request is the current request (its deadline: pmnc.request.remain).

__all__ = ["process_request"]


def echo(*args):
    return args[0] if len(args) == 1 else list(args)


def list_methods():
    return sorted(METHODS)


METHODS = {  # the method names clients call, and what serves them
    "echo": echo,
    "system.listMethods": list_methods,
}


def process_request(request: dict, response: dict) -> None:
    method = METHODS.get(request["method"])
    if method is None:
        raise LookupError(f"unknown method {request['method']}")
    response["result"] = method(*request["args"])


# EOF
