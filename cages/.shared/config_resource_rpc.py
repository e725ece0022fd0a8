# The outgoing side of cage-to-cage calls: pmnc("cage").m.f() uses the pool rpc__<cage>,
# one per target cage, each a bulkhead of pool__size calls at once.

config = dict(
    protocol="rpc",
    pool__idle_timeout=120.0,  # seconds an unused connection is kept
    pool__max_age=600.0,  # seconds any connection is kept
)

# EOF
