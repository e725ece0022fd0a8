# An XML-RPC resource. To use it, copy it to config_resource_<name>.py in your
# cage and call pmnc.transaction.<name>.Some.Method(*args) -> the result; a
# Fault becomes a ResourceError whose code is the fault code.

config = dict(
    protocol="xmlrpc",
    server_address=("127.0.0.1", 8000),
    server_uri="/xmlrpc",
    connect_timeout=3.0,  # seconds, and never more than the request has left
    extra_headers={},
    http_version="HTTP/1.1",
    request_encoding="utf-8",
    allow_none=False,  # True to send and accept None (the <nil/> extension)
    ssl_ca_cert_file=None,  # the CA that verifies the server: turns on HTTPS
    ssl_key_cert_file=None,  # a PEM with this side's key and certificate, if the server asks for one
    ssl_server_hostname=None,
    ssl_ignore_hostname=False,
    pool__size=10,
    pool__idle_timeout=30.0,
    pool__max_age=300.0,
    pool__standby=0,
)

# EOF
