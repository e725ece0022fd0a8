# The sample cage's web page. Edit the text and save: the next request shows it.

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    response["content"] = "Hello, world !"
    response["headers"]["content-type"] = "text/plain"


# EOF
