# Calls from other cages, configured as the original's rpc interface was. pmnc takes
# msgpack only (unless config_cluster.py allows pickle), and says so once in the log.

config = dict \
(
protocol = "rpc",
random_port = 0,                           # any free port, found by the other cages
max_connections = 50,
marshaling_methods = ("msgpack", "pickle"),
)

# DO NOT TOUCH BELOW THIS LINE

__all__ = [ "get", "copy" ]

get = lambda key, default = None: pmnc.config.get_(config, {}, key, default)
copy = lambda: pmnc.config.copy_(config, {})

# EOF
