# An SMPP interface: this cage is an ESME holding one bound session to an SMSC; each
# deliver_sm / data_sm the SMSC sends becomes a request for interface_<name>.py. To use it,
# copy it to config_interface_<name>.py in your cage, copy interface_smpp_1.py to
# interface_<name>.py, and add <name> to `interfaces` in config_interfaces.py. A resource of
# the same name (config_resource_smpp_1.py) submits messages through this session.

config = dict(
    protocol="smpp",
    server_address=("127.0.0.1", 2775),  # the SMSC
    connect_timeout=5.0,  # TCP connect and bind
    response_timeout=3.0,  # an answer from the SMSC; a write to it
    ping_interval=60.0,  # seconds between our enquire_link; one unanswered ends the session (None: none)
    system_id="system_id",
    password="password",
    system_type="PYTHOMNIC3K",
    esme_ton=0x01,
    esme_npi=0x01,
    esme_addr="000000",  # the address_range of the bind
    esme_type="xcvr",  # "rcvr" (receive only), "xmit" (submit only) or "xcvr" (both)
    window=10,  # PDUs to the SMSC outstanding at once; a submit waits for room within its deadline
    parts_timeout=300.0,  # seconds the parts of a concatenated message wait for the rest, then dropped
)

# EOF
