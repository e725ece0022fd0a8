# Reverse calls: this cage (behind a firewall) polls the source cages for calls
# made there as pmnc("<this cage>:reverse").m.f(...). Add "revrpc" to interfaces.

config = dict(
    protocol="revrpc",
    source_cages=(),  # names of the cages to poll, e.g. ("dmz",)
    retry_interval=1.0,  # seconds to wait after a failed poll
    deny_modules=("config_*", "protocol_*", "interface_*"),
)

# EOF
