# An SMPP resource: xa.smpp_1.submit_sm(...) submits a short message through the session of the
# SMPP interface of the same name (config_interface_smpp_1.py), which must be running and bound
# as "xmit" or "xcvr". Not transactional: the SMSC takes the message when it answers.

config = dict(
    protocol="smpp",
    source_addr_ton=0x00,
    source_addr_npi=0x00,
    source_addr="",
    asynchronous=False,  # True: submit_sm returns None without waiting for the SMSC's answers
    pack_7bit=False,  # True: GSM 03.38 text is packed into septets (most SMSCs want it unpacked)
    frag_method="udh",  # a text too long for one message: "udh", "sar", or None (sent whole)
)

# EOF
