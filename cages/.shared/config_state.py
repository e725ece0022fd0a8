# The cage's durable state: cages/<cage>/state/state.sqlite (pmnc.state, retried calls).

config = dict(
    minimum_free_space=50.0,  # megabytes; with less free on the state's disk, writes are refused with an error
)

# EOF
