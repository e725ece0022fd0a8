# How this cage finds and trusts the other cages of its cluster (cage-to-cage calls).
# Copy this file into a cage folder to change it there; keep flock_id and the keys
# the same across the cluster.

config = dict(
    flock_id="DEFAULT",  # cages see and call only cages of the same flock
    ssl_keys_dir=None,  # None: cages/.shared/ssl_keys (CA, cluster.key, cages/<cage>.pem), made if missing
    broadcast_address=None,  # LAN discovery: ("<bind ip>/<broadcast ip>", 12480); None: this machine only.
                             # Adverts leave from <bind ip> (0.0.0.0: the address routed to the broadcast
                             # one), name it under their MAC, and are heard on <broadcast ip> only
    advertise_period=5.0,  # seconds between adverts on the LAN; an instance is gone after 3 missed
    discovery_timeout=3.0,  # seconds a call may spend finding and connecting to an instance
    exact_locations={},  # static locations for networks without broadcast: {"cage": ("host:port", ...)}
    use_pickle=False,  # True: pickle instead of msgpack - only where every cage is trusted with code
    max_frame_size=16777216,  # bytes: the largest call or answer accepted
    busy_wait=0.0002,  # seconds a connection that was answered quickly last time polls for its next answer
                       # (or call) before it sleeps: spares waking a CPU; 0: sleep at once
)

# EOF
