# The web server's listener, in the form of the original's http interface configs
# (port 0: a free port, which the log names).

config = dict \
(
protocol = "http",                        # the interface's protocol
listener_address = ("127.0.0.1", 0),      # where it listens
max_connections = 20,                     # connections at once
ssl_key_cert_file = None,                 # plain HTTP
ssl_ca_cert_file = None,                  #
response_encoding = "utf-8",              # how str content is sent
original_ip_header_fields = (),           # no proxy in front
allowed_methods = ("GET",),               # static pages only
keep_alive_support = True,                #
keep_alive_idle_timeout = 30.0,           #
keep_alive_max_requests = 50,             #
gzip_content_types = (),                  # sent as they are
)

# DO NOT TOUCH BELOW THIS LINE

__all__ = [ "get", "copy" ]

get = lambda key, default = None: pmnc.config.get_(config, {}, key, default)
copy = lambda: pmnc.config.copy_(config, {})

# EOF
