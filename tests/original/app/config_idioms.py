# Settings of module idioms: its own greeting, and another one for its self-test.

config = dict \
(
greeting = "hello from cage $__cage__",
batch_size = 3,
)

self_test_config = dict \
(
greeting = "hello from a self-test",
)

# DO NOT TOUCH BELOW THIS LINE

__all__ = [ "get", "copy" ]

get = lambda key, default = None: pmnc.config.get_(config, self_test_config, key, default)
copy = lambda: pmnc.config.copy_(config, self_test_config)

# EOF
