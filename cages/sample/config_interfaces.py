# The sample cage runs one HTTP interface, named "http", and its performance pages (the log
# says where: "interface performance serves the monitor at http://127.0.0.1:PORT/").

config = dict(
    interfaces=("http", "performance"),
    request_timeout=10.0,
    thread_count=10,
    sweep_period=15.0,
    log_level="LOG",
)

self_test_config = dict(
    log_level="NOISE",
)

# EOF
