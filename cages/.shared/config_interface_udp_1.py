# A UDP interface: each datagram that arrives becomes a request, and nothing is sent back.
# To use it, copy it to config_interface_<name>.py in your cage, copy interface_udp_1.py to
# interface_<name>.py, and add <name> to `interfaces` in config_interfaces.py.
# Datagrams the cage cannot take (more than max_pending waiting, a full receive buffer, too
# large) are dropped, counted, and logged at most once every 10 seconds with the counts.

config = dict(
    protocol="udp",
    listener_address=("127.0.0.1", 5678),  # ("0.0.0.0", port) to receive from beyond this machine (and broadcasts)
    max_packet_size=57344,  # bytes; a bigger datagram is dropped (at most 65507)
    max_pending=1000,  # datagrams waiting for a handler or in one; more are dropped until some finish
    receive_buffer_size=None,  # SO_RCVBUF in bytes, for bursts (None: the system's, net.core.rmem_default)
    reuse_port=False,  # True: other sockets may bind this port too (SO_REUSEADDR + SO_REUSEPORT)
)

# EOF
