# The peer cage answers calls from other cages only.

config = dict \
(
interfaces = ("rpc",),
request_timeout = 10.0,
thread_count = 4,
sweep_period = 15.0,
log_level = "LOG",
)

# DO NOT TOUCH BELOW THIS LINE

__all__ = [ "get", "copy" ]

get = lambda key, default = None: pmnc.config.get_(config, {}, key, default)
copy = lambda: pmnc.config.copy_(config, {})

# EOF
