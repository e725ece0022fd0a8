# A schedule interface: a request at the times given here (a job every night). To use it, copy
# it to config_interface_<name>.py in your cage, copy interface_schedule_1.py to
# interface_<name>.py, and add <name> to `interfaces` in config_interfaces.py.
#
# Give either cron, or format and match (the original's keys), not both:
#   cron="30 2 * * *"                    minute hour day month weekday, in the cage's local time
#   format="%H:%M", match="02:30"        fires when the clock's strftime(format) text changes
#                                        into one the regular expression match matches whole
#                                        (once a day here, not once per second of 02:30)

config = dict(
    protocol="schedule",
    cron="30 2 * * *",  # every day at 02:30
    format=None,  # or a strftime pattern, such as "%H:%M" ...
    match=None,  # ... and the regular expression its text must match, such as "02:30"
    catch_up=False,  # True: the firings missed while the cage was down run at its start (at most 100, the latest)
    allow_overlap=False,  # True: fire even while the previous run is still going (else skipped, with a warning)
    request_timeout=None,  # seconds a run may take (None: the cage's request_timeout)
)

# EOF
