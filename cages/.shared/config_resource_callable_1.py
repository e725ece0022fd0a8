# Any library as a transaction participant, through hooks. Copy as config_resource_<name>.py.
# Each hook is optional; begin_transaction, execute, commit and rollback may also be given
# per call, as resource kwargs (the original's form):
#   xa = pmnc.transaction.create()
#   xa.<name>(execute=f, commit=g, rollback=h).execute(*args, **kwargs)
#   result, = xa.execute()
# For example, a Redis client (what connect returns is resource.connection):
#   import redis
#   config = dict(
#       protocol="callable",
#       server_address=("127.0.0.1", 6379),     # any other key: resource.config["server_address"]
#       connect=lambda resource: redis.Redis(*resource.config["server_address"], socket_timeout=3.0),
#       execute=lambda resource, *args: resource.connection.execute_command(*args),
#   )
#   pmnc.transaction.<name>.execute("SET", "key", "value")
# Errors a hook raises become ResourceError naming the hook: recoverable from connect and
# begin_transaction (nothing was done), not from execute; the connection is then dropped.
# A hook may raise pmnc.errors.ResourceError itself to say otherwise.

config = dict(
    protocol="callable",
    connect=None,  # connect() or connect(resource): once per pooled connection, returns the connection
    disconnect=None,  # disconnect(resource): when the pool drops it (None: the connection's close(), if any)
    begin_transaction=None,  # begin_transaction(resource, xid, **details): before each call
    execute=None,  # execute(resource, *args, **kwargs): the call; its result is returned
    commit=None,  # commit(resource): the transaction commits
    rollback=None,  # rollback(resource): the transaction rolls back
    pool__size=10,  # connections in use at once (threads of the pool)
    pool__idle_timeout=30.0,  # an unused connection is disconnected after this
    pool__max_age=300.0,  # any connection is disconnected after this
)

# EOF
