# A JMS interface: messages from a queue of a JMS broker (ActiveMQ, over its STOMP connector)
# become requests. To use it, copy it to config_interface_<name>.py in your cage, copy
# interface_jms_1.py to interface_<name>.py, and add <name> to `interfaces` in
# config_interfaces.py. A message is acknowledged only after its handler succeeded.

config = dict(
    protocol="jms",
    server_address=("127.0.0.1", 61613),  # the broker's STOMP connector (stomp://...)
    queue="orders.in",  # a JMS queue name; or topic="prices" with durable_subscription="<a name>"
    username=None,  # None: anonymous
    password=None,
    concurrency=1,  # messages in process at once (1: one by one, in order; at most thread_count)
    max_redeliveries=6,  # failures after the first before the message goes to the dead-letter queue
    redelivery_delay=1.0,  # seconds before a failed message comes again, doubling each time (at most 60)
    dead_letter_queue="ActiveMQ.DLQ",  # where poison messages go, with the error in dlqDeliveryFailureCause
    duplicate_window=86400.0,  # seconds a handled message's id stops its copies from running again
    bytes_messages=False,  # True: bytes messages reach the handler as request["message_bytes"]
    max_message_size=4194304,  # bytes; a bigger message goes to the dead-letter queue
    connect_timeout=5.0,
    heartbeat=10.0,  # seconds between heart-beats each way (0: none): a silent broker is noticed
    ssl_ca_cert_file=None,  # the CA of the broker's certificate: turns on TLS (a stomp+ssl connector)
    ssl_key_cert_file=None,  # this cage's key and certificate, where the broker asks for one
)

# EOF
