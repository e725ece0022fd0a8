# A resource that does nothing, for tests and examples:
#   pmnc.transaction.void.success("a", b=1)    # returns (("a",), {"b": 1})
#   pmnc.transaction.void.failure()            # raises ResourceError("failure")
#   pmnc.transaction.void.execute(f, 1, x=2)   # returns f(1, x=2), run on a thread of the pool
# It takes part in any transaction (two-phase ones too), committing and rolling back nothing.
# Its pool keys are those of every resource.

config = dict(
    protocol="void",
    pool__size=None,  # threads, and connections up to size + 2 (None: the cage's thread_count)
    pool__standby=0,  # connections kept connected while idle
    pool__idle_timeout=30.0,  # an unused connection is closed after this
    pool__max_age=300.0,  # any connection is closed after this
    pool__min_time=0.0,  # a call with less time left is declined
    pool__max_time=None,  # a call may take at most this (None: until the request's deadline)
)

# EOF
