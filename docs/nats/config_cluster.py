# cages/.shared/config_cluster.py for cages that call each other through the NATS cluster
# of nats-1.conf .. nats-3.conf (docs/nats/README.md). The same file on every host of the
# flock; the keys not given here keep their defaults (cages/.shared/config_cluster.py).

config = dict(
    flock_id="orders",  # cages see and call only cages of the same flock; also names the subjects
                        # (pmnc.orders.call.<cage>) and the JetStream stream (PMNC_orders)
    ssl_keys_dir=None,  # None: cages/.shared/ssl_keys (ca.pem, cluster.key, cages/<cage>.pem)
    transport="nats",  # calls between cages are NATS requests; the rpc interface listens on no port
    nats_servers=(  # any of them will do: the cage connects to one and fails over to the others
        "nats://nats-1.example.net:4222",
        "nats://nats-2.example.net:4222",
        "nats://nats-3.example.net:4222",
    ),
    # With the tls block of nats-N.conf uncommented: tls:// URLs, and the cage shows its own
    # certificate (cages/<cage>.pem) and checks the server against ca.pem.
    # nats_servers=("tls://nats-1.example.net:4222", "tls://nats-2.example.net:4222",
    #               "tls://nats-3.example.net:4222"),
    # nats_tls="cluster",
    nats_connect_timeout=5.0,  # seconds a cage waits for NATS at start (then it keeps trying)
    retry_store="jetstream",  # retried calls (pmnc("cage", queue="q")) kept in JetStream, not in a local file
    jetstream_replicas=3,  # every retried call on all three nodes: one node may be lost
    jetstream_duplicate_window=120.0,  # seconds JetStream drops a retried call published twice
    max_frame_size=8372224,  # 8 MB less 16 KiB for the seal: calls that fit the servers' max_payload
)

# EOF
