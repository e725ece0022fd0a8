# A PostgreSQL database (psycopg 3). Copy as config_resource_<name>.py and use it as
#   rows, = pmnc.transaction.<name>.execute("SELECT ... WHERE id = {id}", id=1)

config = dict(
    protocol="postgresql",
    server_address=("127.0.0.1", 5432),
    database="postgres",
    username="postgres",
    password=None,  # None: trust, peer or ~/.pgpass authentication
    # dsn="postgresql://user:secret@db.example.com:5432/orders?sslmode=require",  # instead of the four above
    connect_timeout=3.0,  # seconds, and never past the request's deadline (libpq's minimum is 2)
    decimal_precision=(28, 8),  # (digits, of which after the point) a Decimal must fit, both ways
    pool__size=10,  # connections in use at once (threads of the pool)
    pool__standby=0,  # connections kept open while idle
    pool__idle_timeout=30.0,
    pool__max_age=300.0,
)

# EOF
