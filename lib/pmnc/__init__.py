"""pmnc: a runtime for integration middleware, a modern Pythomnic3k."""

__version__ = "0.1.0"
