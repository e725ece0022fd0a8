"""TLS for pmnc's clients (HTTP, SMTP, POP3 resources and interfaces): the one place that
says TLS 1.2 or later, the server verified, from a config's ssl_* keys."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any


def client_context(config: Mapping[str, Any]) -> ssl.SSLContext:
    """The server verified against `ssl_ca_cert_file` (the system's CAs if None) and, unless
    `ssl_ignore_hostname`, its host name; this cage's `ssl_key_cert_file` shown if given;
    `ssl_ciphers` if given."""
    context = ssl.create_default_context(cafile=config["ssl_ca_cert_file"] or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = not config.get("ssl_ignore_hostname", False)
    if config["ssl_key_cert_file"]:
        context.load_cert_chain(config["ssl_key_cert_file"])
    if config.get("ssl_ciphers"):
        context.set_ciphers(config["ssl_ciphers"])
    return context
