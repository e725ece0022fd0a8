# The cage-wide settings of the web server cage, written as a Pythomnic3k cage had them.

config = dict \
(
interfaces = ("http",),           # the one interface this cage runs
request_timeout = 10.0,           # seconds each request gets
thread_count = 4,                 # worker threads
sweep_period = 15.0,              # seconds between resource pool sweeps
log_level = "INFO",               # what the log keeps
)

self_test_config = dict \
(
log_level = "NOISE",              # a self-test logs everything
)

# DO NOT TOUCH BELOW THIS LINE

__all__ = [ "get", "copy" ]

get = lambda key, default = None: pmnc.config.get_(config, self_test_config, key, default)
copy = lambda: pmnc.config.copy_(config, self_test_config)

# EOF
