# An Oracle database (python-oracledb in thin mode: no Oracle Client libraries, no NLS_LANG).
# Copy as config_resource_<name>.py and use it as
#   rows, = pmnc.transaction.<name>.execute("SELECT ... WHERE id = {id}", id=1)
#   rows, = pmnc.transaction.<name>.execute("EXECUTE pkg.proc({id})", id=1)  # rows of its OUT SYS_REFCURSOR `result`
# Two-phase commit (create(two_phase=True)) needs, for recovery, SELECT on DBA_PENDING_TRANSACTIONS
# and FORCE TRANSACTION (FORCE ANY TRANSACTION if branches of other users are to be finished):
#   GRANT SELECT ON sys.dba_pending_transactions TO <user>; GRANT FORCE TRANSACTION TO <user>;
# Its branch ids, pmnc:<node>.<cage>:<xid>:<n>, must fit Oracle's 64 bytes: the node and cage
# names together at most about 24 characters.

config = dict(
    protocol="oracle",
    server_address=("127.0.0.1", 1521),
    database="FREEPDB1",  # the service name
    username="pmnc",
    password="secret",
    # dsn="db.example.com:1521/orders",  # instead of server_address and database: an Easy Connect string
    # dsn="pmnc/secret@db.example.com:1521/orders",  # ... which may carry the username and password too
    # dsn="(DESCRIPTION=(ADDRESS=(PROTOCOL=TCPS)(HOST=db.example.com)(PORT=2484))(CONNECT_DATA=(SERVICE_NAME=orders)))",
    connect_timeout=3.0,  # seconds for the whole connect and log on, and never past the request's deadline
    decimal_precision=(28, 8),  # (digits, of which after the point) a Decimal must fit, both ways (NUMBER reads)
    pool__size=10,  # connections in use at once (threads of the pool)
    pool__standby=0,  # connections kept open while idle
    pool__idle_timeout=30.0,
    pool__max_age=300.0,
)

# EOF
