# The handler of a file interface: called on a worker thread for each file in the folder,
# in name order.
#
# request = {"file_name": "/tmp/spool/a0001.msg"}   the file's absolute path
# response = {}                                     (nothing is sent back)
#
# Read the file; do not delete or move it, the interface does. Return and the file is deleted
# (or moved to done_directory); raise (or run past the deadline) and it stays and is taken
# again by a later pass; after max_failures failures it is moved to failed_directory, logged
# once. pmnc.request is the current request (pmnc.request.remain: the seconds left).

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    with open(request["file_name"], "rb") as f:
        data = f.read()
    pmnc.log.message(f"file {request['file_name']}: {len(data)} byte(s)")


# EOF
