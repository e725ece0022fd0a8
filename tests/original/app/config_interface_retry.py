# The retried calls of this cage run soon after they fail: the tests wait for them.

config = dict \
(
protocol = "retry",
queue_count = 2,
keep_order = False,
retry_interval = 0.2,
retention_time = 3600.0,
)

# DO NOT TOUCH BELOW THIS LINE

__all__ = [ "get", "copy" ]

get = lambda key, default = None: pmnc.config.get_(config, {}, key, default)
copy = lambda: pmnc.config.copy_(config, {})

# EOF
