# A JMS queue to send to (ActiveMQ, over its STOMP connector). Copy as config_resource_<name>.py:
#   xa = pmnc.transaction.create()
#   xa.<name>.send("message text", JMSCorrelationID="x-1", my_property="value")
#   message_id, = xa.execute()
# The message reaches the queue only when the transaction commits; on rollback, never.

config = dict(
    protocol="jms",
    server_address=("127.0.0.1", 61613),  # the broker's STOMP connector
    queue="orders.in",  # where send() sends (a call's JMSDestination="other.queue" wins)
    username=None,  # None: anonymous
    password=None,
    persistent=True,  # persistent delivery unless a call says JMSDeliveryMode="1"
    max_message_size=4194304,  # bytes of a message body; a bigger one is refused before sending
    connect_timeout=5.0,
    heartbeat=10.0,
    ssl_ca_cert_file=None,  # the CA of the broker's certificate: turns on TLS
    ssl_key_cert_file=None,  # this cage's key and certificate, where the broker asks for one
    pool__size=10,  # connections in use at once
    pool__idle_timeout=30.0,
    pool__max_age=300.0,
)

# EOF
