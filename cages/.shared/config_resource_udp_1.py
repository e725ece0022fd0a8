# Where to send UDP datagrams. Copy it as config_resource_<name>.py:
#   pmnc.transaction.<name>.send(b"FOOBAR")
# or with other participants:
#   xa = pmnc.transaction.create()
#   xa.<name>.send(b"FOOBAR")
#   xa.execute()  # (None,)
# The datagram goes out at once, whatever the transaction then decides (it cannot be taken
# back); an error if it cannot be sent whole.

config = dict(
    protocol="udp",
    server_address=("127.0.0.1", 5678),  # (host, port) the datagrams go to
    broadcast=False,  # True: SO_BROADCAST, for a broadcast server_address such as ("255.255.255.255", 5678)
)

# EOF
