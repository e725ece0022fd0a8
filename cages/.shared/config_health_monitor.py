# The health monitor (a cage named health_monitor, see cages/health_monitor/): how it
# probes the other cages. Copy this file into that cage's folder to change it there;
# it is read again before each pass.

config = dict(
    probe_period=30.0,  # seconds between two probes of one instance; the instances are spread over it
    down_after=2,  # failed probes in a row before an instance is reported down (one lost probe is not)
    probe_timeout=None,  # seconds a probe may take; None: min(request_timeout, probe_period)
    probe_threads=16,  # probes under way at once
    forget_after=3600.0,  # seconds a down instance that is no longer discovered stays on the cluster page
)

# EOF
