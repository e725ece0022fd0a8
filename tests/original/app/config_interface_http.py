# The interface the test drives the application through.

config = dict \
(
protocol = "http",
listener_address = ("127.0.0.1", 0),
max_connections = 20,
ssl_key_cert_file = None,
ssl_ca_cert_file = None,
response_encoding = "utf-8",
original_ip_header_fields = (),
allowed_methods = ("GET",),
keep_alive_support = False,
)

# DO NOT TOUCH BELOW THIS LINE

__all__ = [ "get", "copy" ]

get = lambda key, default = None: pmnc.config.get_(config, {}, key, default)
copy = lambda: pmnc.config.copy_(config, {})

# EOF
