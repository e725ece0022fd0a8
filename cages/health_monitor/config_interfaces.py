# The health_monitor cage: it watches every other cage of the cluster.
#
#     python startup.py health_monitor
#
# It probes every cage it discovers (this machine's registry, LAN adverts if config_cluster.py
# sets broadcast_address, and the static exact_locations there) every probe_period
# (config_health_monitor.py), calls the cage_up / cage_down hooks of health_monitor_event.py
# (which raise ALERT notifications by default), and shows the whole cluster at
# http://127.0.0.1:8090/cluster (config_interface_performance.py). Every other cage forwards
# its pmnc.notify messages here: http://127.0.0.1:8090/notifications shows them all.

config = dict(
    interfaces=("performance", "rpc", "retry"),  # the cluster page, probes and notifications, retried calls
    request_timeout=10.0,
    thread_count=10,
    sweep_period=15.0,
    log_level="LOG",
)

# EOF
