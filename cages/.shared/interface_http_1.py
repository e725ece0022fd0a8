# The handler of an HTTP interface: called on a worker thread for each request.
#
# request  = {"method": "GET", "url": "/path?query", "headers": {...lower-case names...},
#             "content": b"..."}
# response = {"status_code": 200, "headers": {"content-type": ...}, "content": b"" or str}
#
# pmnc.request is the current request (its deadline: pmnc.request.remain).

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    response["content"] = "Hello, world !"
    response["headers"]["content-type"] = "text/plain"


# EOF
