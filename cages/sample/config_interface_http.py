# The sample cage's HTTP interface, on http://127.0.0.1:8080/

config = dict(
    protocol="http",
    listener_address=("127.0.0.1", 8080),
    max_connections=100,
    ssl_key_cert_file=None,
    ssl_ca_cert_file=None,
    response_encoding="utf-8",
    original_ip_header_fields=(),
    allowed_methods=("GET", "POST"),
    keep_alive_support=True,
    keep_alive_idle_timeout=120.0,
    keep_alive_max_requests=1000,
)

# EOF
