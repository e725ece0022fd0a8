# The cage's own resource: a notebook kept in a JSON file (see protocol_notebook.py).

config = dict \
(
protocol = "notebook",
path = "$__cage_dir__/notebook.json",
pool__size = 2,
)

# DO NOT TOUCH BELOW THIS LINE

__all__ = [ "get", "copy" ]

get = lambda key, default = None: pmnc.config.get_(config, {}, key, default)
copy = lambda: pmnc.config.copy_(config, {})

# EOF
