# The handler of a UDP interface: called on a worker thread for each datagram.
#
# request = {
#   "packet": b"...",          the datagram, as it came (at most max_packet_size bytes)
#   "peer_ip": "127.0.0.1",    who sent it (also pmnc.request.parameters["auth_tokens"]["peer_ip"])
#   "peer_port": 40001,        from which port
# }
# response = {}  (nothing is sent back: to answer, send a datagram with a udp resource)
#
# Nothing waits for the outcome: an error raised here is logged, and the datagram is gone.
# pmnc.request is the current request (pmnc.request.remain: the seconds left).

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    pmnc.log.info(f"UDP packet from {request['peer_ip']}: {len(request['packet'])} byte(s)")


# EOF
