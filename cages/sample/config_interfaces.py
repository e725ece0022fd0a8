# The sample cage runs one HTTP interface, named "http".

config = dict(
    interfaces=("http",),
    request_timeout=10.0,
    thread_count=10,
    sweep_period=15.0,
    log_level="LOG",
)

self_test_config = dict(
    log_level="NOISE",
)

# EOF
