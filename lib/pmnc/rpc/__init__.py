"""Cage-to-cage calls: codec and frames, TLS identities, discovery (locator), client and server."""
