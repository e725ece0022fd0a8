# pmnc.notify.info/warning/error/alert(message) (lib/pmnc/monitor/notify.py): each notification is
# logged as "[LEVEL] message", kept for the /notifications page and forwarded to cage health_monitor
# as a retried call - unless this cage is health_monitor, or has no rpc or retry_queue interface.

config = dict(
    messages_to_keep=100,  # the last notifications kept in memory (pmnc.notify.extract(), the pages)
    retry_queue="retry",  # the queue of the retried calls to health_monitor; its interface must run here
    rate_per_minute=10.0,  # per level: notifications beyond this (after a burst) are only counted, and
    burst=20,  # one "N notifications suppressed" of that level follows once the rate allows
    dedupe_seconds=60.0,  # the same level and message again within this many seconds of the first is
                          # folded into it (its count goes up), not logged or forwarded again; 0: never
)

# EOF
