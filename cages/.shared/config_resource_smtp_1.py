# An SMTP server to send mail through. Copy it as config_resource_<name>.py:
#   xa = pmnc.transaction.create()
#   xa.<name>.send("Sender <from@example.com>", "to@example.com, other@example.com", "subject", "text",
#                  {"X-Header": "value"},                                         # optional headers
#                  (("report.pdf", "application/pdf", b"%PDF..."),),             # optional attachments
#                  (("text/html", '<p>Hi <img src="cid:{logo.png}"></p>',       # optional alternatives,
#                    (("logo.png", "image/png", b"..."),)),),                   # each with related files
#                  cc="copy@example.com", bcc=["hidden@example.com"])
#   message_id, = xa.execute()
# The message is delivered only when the transaction commits (the final "." of DATA is its
# commit); on rollback the server discards it.

config = dict(
    protocol="smtp",
    server_address=("127.0.0.1", 25),
    connect_timeout=3.0,  # seconds, and never more than the request has left
    encoding="utf-8",  # the charset of text given as str (UTF-8 where the text does not fit in it)
    helo=None,  # the name this side gives in EHLO (None: this host's name)
    auth_method=None,  # "PLAIN" (also when None) or "LOGIN"; used when username and password are set
    username=None,
    password=None,
    starttls=False,  # True: connect plain, then STARTTLS (verified with ssl_ca_cert_file, else the system's CAs)
    ssl_ca_cert_file=None,  # the CA that verifies the server: turns on TLS from the start (port 465) unless starttls
    ssl_key_cert_file=None,  # a PEM with this side's key and certificate, if the server asks for one
    ssl_server_hostname=None,  # the name to send (SNI) and check, if not the server_address host
    ssl_ignore_hostname=False,
    pool__size=10,  # connections used at once (and threads)
    pool__idle_timeout=30.0,  # an unused connection is closed after this
    pool__max_age=300.0,  # any connection is closed after this
)

# EOF
