# The health monitor's pages at a fixed address: /cluster (the whole cluster), /performance,
# /notifications. Loopback only; for another address, protect the pages (see
# cages/.shared/config_interface_performance.py).

config = dict(
    protocol="performance",
    listener_address=("127.0.0.1", 8090),
)

# EOF
