# An HTTP(S) interface. To use it, copy it to config_interface_<name>.py in
# your cage, copy interface_http_1.py to interface_<name>.py, and add <name>
# to `interfaces` in config_interfaces.py.

config = dict(
    protocol="http",
    listener_address=("127.0.0.1", 8080),  # ("0.0.0.0", port) to listen beyond this machine
    max_connections=100,  # connections whose request head is in: in flight, receiving a body, or idle keep-alive
    max_connections_per_ip=50,  # of those one client address may hold (default: half); behind a proxy, all
    max_pending_heads=1000,  # connections still waiting for a head; one address gets the same share of them
    header_timeout=5.0,  # seconds for a request's line and headers to arrive, else 408 (at most request_timeout)
    ssl_key_cert_file=None,  # a PEM file with the key and certificate: with ssl_ca_cert_file, turns on HTTPS
    ssl_ca_cert_file=None,  # the CA that verifies client certificates (both: python3 startup.py --keys)
    ssl_client_cert_required=False,  # True: only clients with a certificate from that CA get in
    response_encoding="utf-8",
    gzip_content_types=(),  # regexes of content types to gzip when the client accepts it, e.g. ("text/.+",)
    original_ip_header_fields=(),  # e.g. ("X-Forwarded-For",) behind a proxy
    allowed_methods=("GET", "POST"),
    keep_alive_support=True,
    keep_alive_idle_timeout=120.0,
    keep_alive_max_requests=1000,
    max_url_size=8192,  # bytes; longer gets 414
    max_header_size=65536,  # bytes of all headers; more gets 431
    max_body_size=1048576,  # bytes; more gets 413
    error_tracebacks=False,  # True shows the failing stack in 500 responses
)

# EOF
