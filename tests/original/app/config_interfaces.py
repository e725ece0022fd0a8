# The cage-wide settings of the application cage, in the original's form.

config = dict \
(
interfaces = ("http", "retry", "rpc"),  # the pages that drive it, its retried calls, calls from other cages
request_timeout = 10.0,                 # seconds each request gets
thread_count = 6,                       # worker threads
sweep_period = 15.0,                    # seconds between resource pool sweeps
log_level = "LOG",                      # what the log keeps
)

self_test_config = dict \
(
log_level = "NOISE",
)

# DO NOT TOUCH BELOW THIS LINE

__all__ = [ "get", "copy" ]

get = lambda key, default = None: pmnc.config.get_(config, self_test_config, key, default)
copy = lambda: pmnc.config.copy_(config, self_test_config)

# EOF
