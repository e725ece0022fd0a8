# The handler of a schedule interface: called on a worker thread at each firing.
#
# request = {
#   "invocation_time": datetime.datetime(2026, 1, 15, 2, 30),  the time it was scheduled for
#                                         (naive, local time); later than now when catching up
# }
# response = {}  (nothing is sent anywhere)
#
# Raise and the failure is logged; the schedule goes on. While this still runs, the next
# firing is skipped with a warning (unless allow_overlap). pmnc.request is the current request
# (pmnc.request.remain: the seconds left).

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    invoked = request["invocation_time"].strftime("%Y-%m-%d %H:%M:%S")
    pmnc.log.message(f"scheduled to run at {invoked}")


# EOF
