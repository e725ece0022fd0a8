"""One module per protocol; each interface module defines `Interface`."""
