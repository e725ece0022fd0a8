# The cage's monitor: a page with charts of every interface and resource, /metrics for
# Prometheus, /status.json for scripts and /notifications. It is served by the interface
# named "performance" in config_interfaces.py; the log says where ("interface performance
# serves the monitor at http://127.0.0.1:PORT/"). Copy this file into a cage folder to
# change it there (say, a fixed port for Prometheus to scrape).

config = dict(
    protocol="performance",
    listener_address=("127.0.0.1", 0),  # loopback, any free port; ("0.0.0.0", 8090) to be seen from elsewhere
    refresh_seconds=10,  # the page refreshes itself this often, in place (0: never)
    # username="monitor", password="...",  # both set: every page asks for them (HTTP Basic; use HTTPS beyond loopback)
    # css_font_family="DejaVu Sans, sans-serif",  # the page's font; by default the system's sans-serif
    # max_connections=100,
    # ssl_key_cert_file=None,  # a PEM file with the key and certificate: with ssl_ca_cert_file, turns on HTTPS
    # ssl_ca_cert_file=None,  # the CA that verifies client certificates
    # ssl_client_cert_required=False,  # True: only browsers and scrapers with a certificate from that CA get in
    # ssl_ciphers=None,
    # response_encoding="utf-8",  # the pages' encoding; what it cannot hold is written as character references
    # original_ip_header_fields=(),  # e.g. ("X-Forwarded-For",) behind a proxy
    # allowed_methods=("GET", "HEAD"),  # the monitor's pages are only read: others get 405
    # keep_alive_support=True,
    # keep_alive_idle_timeout=120.0,
    # keep_alive_max_requests=1000,
    # gzip_content_types=("text/.+", "application/json"),  # /metrics and the pages are gzipped for clients that ask
)

# EOF
