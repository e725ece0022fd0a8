# The incoming side of cage-to-cage calls: mutual TLS with the cluster's keys
# (see config_cluster.py). Only cages with a certificate of the cluster CA connect.

config = dict(
    protocol="rpc",
    listener_address=("127.0.0.1", 0),  # port 0: any free port, found through discovery; for a LAN,
                                        # ("0.0.0.0", 0) and broadcast_address in config_cluster.py
    max_connections=200,
    idle_timeout=600.0,  # seconds an idle caller's connection is kept
    deny_modules=("config_*", "protocol_*", "interface_*"),  # modules other cages may not call (fnmatch patterns)
)

# EOF
