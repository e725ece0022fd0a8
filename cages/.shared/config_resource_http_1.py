# An HTTP(S) resource. To use it, copy it to config_resource_<name>.py in your
# cage and call pmnc.transaction.<name>.get("/path") or .post("/path", b"body",
# {"content-type": "..."}) -> (status, lower-cased headers, body bytes).

config = dict(
    protocol="http",
    server_address=("127.0.0.1", 80),
    connect_timeout=3.0,  # seconds, and never more than the request has left
    extra_headers={},  # sent with every request; a call's own headers win
    http_version="HTTP/1.1",
    max_response_size=16777216,  # bytes; a larger response is a resource error
    ssl_ca_cert_file=None,  # the CA that verifies the server: turns on HTTPS
    ssl_key_cert_file=None,  # a PEM with this side's key and certificate, if the server asks for one
    ssl_server_hostname=None,  # the name to send (SNI) and check, if not the server_address host
    ssl_ignore_hostname=False,
    pool__size=10,  # connections used at once (and threads)
    pool__idle_timeout=30.0,  # an unused connection is closed after this
    pool__max_age=300.0,  # any connection is closed after this
    pool__standby=0,  # connections kept open while idle
)

# EOF
