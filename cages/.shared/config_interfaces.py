# Cage-wide settings. Copy this file into a cage folder to change them there.

config = dict(
    interfaces=("performance", "rpc", "retry"),  # names of the interfaces to run, each with its config_interface_<name>.py
    request_timeout=10.0,  # seconds every request gets, from its first byte to its answer
    thread_count=10,  # worker threads: how many requests run at once
    sweep_period=15.0,  # seconds between sweeps of resource pools
    log_level="LOG",  # ERROR MESSAGE WARNING LOG INFO DEBUG NOISE; read every second
    statistics=True,  # count requests and resource calls for the performance pages (False: nothing); read every second
    cpu_affinity="auto",  # CPUs the cage's threads run on: "auto" (together, on the CPU others use least), (0,), None (wherever the system puts them); read every second
)

self_test_config = dict(
    log_level="NOISE",
)

# EOF
