# A POP3 interface: the messages in a mailbox become requests. To use it, copy it to
# config_interface_<name>.py in your cage, copy interface_pop3_1.py to interface_<name>.py,
# and add <name> to `interfaces` in config_interfaces.py. A message is deleted from the
# mailbox only after its handler succeeded; one that keeps failing is set aside.

config = dict(
    protocol="pop3",
    server_address=("mail.domain.com", 110),  # 110: POP3 (with stls=True, STLS); 995: POP3S (ssl_ca_cert_file)
    connect_timeout=5.0,  # seconds to connect and log in, and for each short command's answer
    username="user",
    password="pass",
    interval=60.0,  # seconds between polls; a poll that took messages is followed by another at once
    stls=False,  # True: STLS on the plain connection, the server verified (against the system's CAs if no CA)
    ssl_ca_cert_file=None,  # the CA of the server's certificate; without stls: TLS from the start (POP3S)
    ssl_key_cert_file=None,  # this cage's key and certificate, where the server asks for one
    ssl_server_hostname=None,  # the name the certificate must carry (None: server_address's host)
    ssl_ignore_hostname=False,  # True: any name, the certificate still verified against the CA
    max_failures=5,  # handler runs that fail before the message is set aside (saved, then deleted)
    failed_directory=None,  # where messages set aside are saved as <uidl>.eml (None: <cage>/pop3_failed/<name>)
    max_message_size=33554432,  # bytes; a bigger message is set aside without running the handler
    duplicate_window=86400.0,  # seconds a handled message's UIDL keeps it from running again
    concurrency=1,  # messages of one poll handled at once (1: one by one, in mailbox order)
)

# EOF
