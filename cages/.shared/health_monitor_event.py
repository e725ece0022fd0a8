# The health monitor's hooks (see README, "The health monitor"). Every cage has this module:
#
#   probe()      called in every cage by the health_monitor cage, once per probe_period;
#                what it returns (a dict) is handed to cage_up, and a different answer
#                from one probe to the next is an event of its own
#   notify(...)  called in the health_monitor cage by pmnc.notify of every other cage
#                (a retried call): the message is shown there as "node.cage: message"
#   cage_up / cage_down
#                called in the health_monitor cage when an instance comes up (or answers
#                its probe differently, or has restarted: cage_down then cage_up) and when
#                it has failed down_after probes in a row (config_health_monitor.py)
#
# Copy this file into a cage folder to change the hooks there: e.g. return figures of
# your own from probe(), or page someone from cage_down.

__all__ = ["probe", "notify", "cage_up", "cage_down"]

import time

from typecheck import by_regex, one_of

valid_node_name = by_regex("^[A-Za-z0-9_-]{1,32}$")
valid_cage_name = by_regex("^[A-Za-z0-9_-]{1,32}$")

CLOCK_SKEW = 5  # seconds a notification's own time may be off before it is shown with it


def probe() -> dict:
    return {}


def notify(timestamp: int, node: valid_node_name, cage: valid_cage_name,
           level: one_of("INFO", "WARNING", "ERROR", "ALERT"), message: str):
    now = int(time.time())
    if abs(timestamp - now) <= CLOCK_SKEW:
        when = ""
    elif time.localtime(timestamp)[:3] == time.localtime(now)[:3]:  # the same day: the time is enough
        when = time.strftime(" (%H:%M:%S)", time.localtime(timestamp))
    else:
        when = time.strftime(" (%Y-%m-%d %H:%M:%S)", time.localtime(timestamp))
    emit = {"INFO": pmnc.notify.info, "WARNING": pmnc.notify.warning,
            "ERROR": pmnc.notify.error, "ALERT": pmnc.notify.alert}[level]
    # source: each cage's notifications are rate-limited apart from the others'
    emit(f"{node}.{cage}{when}: {message}", source=f"{node}.{cage}")


def cage_up(node: str, cage: str, probe_result: dict):
    pmnc.notify.alert(f"{node}.{cage} is up")


def cage_down(node: str, cage: str):
    pmnc.notify.alert(f"{node}.{cage} is down")


# EOF
