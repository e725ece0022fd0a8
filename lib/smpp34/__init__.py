"""The original's `smpp34` package path: its PDU classes and errors, as pmnc.protocols.smpppdu
has them (PDUs built and parsed by smpplib underneath), so `import smpp34.smpp_pdus` in a
Pythomnic3k cage module works unchanged."""
