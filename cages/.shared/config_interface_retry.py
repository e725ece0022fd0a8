# The engine of retried calls: pmnc("cage", queue="retry", id=..., expires_in=...).module.method(...)
# (see lib/pmnc/retry.py). Calls are queued in cages/<cage>/state/state.sqlite whether or not this runs.
# This interface, `retry`, runs queue "retry" and every queue without a retry interface of its own.
# A queue with settings of its own: copy this file to cages/<cage>/config_interface_<queue>.py and
# add "<queue>" to config_interfaces.py's `interfaces` (max_pending_per_source is read from here only).

config = dict(
    protocol="retry",
    queue_count=4,  # calls of one queue run at once
    keep_order=False,  # True: one call of a queue at a time, in the order queued; a failing one holds the rest
    retry_interval=120.0,  # seconds before a failed call is tried again
    backoff=False,  # True: double the wait after each failure of a call ...
    max_retry_interval=3600.0,  # ... up to this many seconds
    retention_time=259200.0,  # seconds (3 days) a finished call's id keeps duplicates out
    max_pending_per_source=100000,  # calls another cage may have handed over and pending here; more are
                                    # refused and stay with that cage, which tries again later
    # request_timeout=10.0,  # seconds one attempt may take; the cage's request_timeout if not given
)

# EOF
