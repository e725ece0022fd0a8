"""One module per protocol, each defining `Interface` and/or `Resource` (see
docs/protocols.md); a cage may add or replace one with its own `protocol_<name>.py`
(loader.protocol_class finds it)."""
