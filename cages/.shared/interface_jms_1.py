# The handler of a JMS interface: called on a worker thread for each message.
#
# request  = {"message_id": "ID:...",            the broker's JMSMessageID
#             "message_text": "...",             the text (None for a bytes message)
#             "message_bytes": b"...",           only for a bytes message (bytes_messages=True)
#             "headers": {"JMSCorrelationID": "", "JMSDeliveryMode": "2", "JMSExpiration": "0",
#                         "JMSMessageID": "ID:...", "JMSPriority": "4", "JMSRedelivered": "false",
#                         "JMSTimestamp": "...", "JMSType": "", "JMSReplyTo": "",
#                         ...and every string property of the message}}
# response = {}  (nothing is sent back: to answer, send a message with a jms resource)
#
# Return and the message is acknowledged; raise (or run past the deadline) and it is not:
# it comes again with JMSRedelivered "true", and after max_redeliveries failures it goes to
# the dead-letter queue with the error. A copy of a message already handled is acknowledged
# without calling this again. pmnc.request is the current request (pmnc.request.remain).

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    pmnc.log.message(f"JMS message {request['message_id']}: {request['message_text']!r}")


# EOF
