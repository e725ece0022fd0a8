# The handler of a POP3 interface: called on a worker thread for each message in the mailbox.
#
# request = {
#   "message_id": "000000016b148c38",     the message's UIDL (unique in the mailbox)
#   "message": <email.message.Message>,   the message parsed (compat32), as the original gave it
#   ...and the message taken apart, best effort (never raising on malformed mail):
#   "subject": "Привет",                  decoded ("" if there is none)
#   "from": ("Имя", "name@example.com"),  (display name, address); ("", "") if there is none
#   "to": [("Alice", "alice@example.com"), ("", "bob@example.com")],
#   "cc": [...],                          as "to"
#   "date": datetime.datetime(...),       aware; None if missing or unreadable
#   "text": "...",                        the first text/plain body (line ends "\n"), or None
#   "html": "<html>...",                  the first text/html body, or None
#   "inline": {"img1@x": ("logo.png", "image/png", b"...")},  parts the HTML shows as "cid:img1@x",
#                                         by Content-ID (without <>): (name, mime type, content)
#   "attachments": [("report.pdf", "application/pdf", b"..."), ...],  (name, mime type, content);
#                                         the name may be "", a forwarded message is message/rfc822
#   "defects": ["Subject: unknown charset 'x-foo'", ...],  what could not be read as it should
#   "message_bytes": b"...",              the message as it was received
# }
# response = {}  (nothing is sent back: to answer, send mail with an smtp resource)
#
# Return and the message is deleted; raise (or run past the deadline) and it stays in the
# mailbox and is taken again by the next poll; after max_failures failures it is saved under
# failed_directory and deleted, logged once. A message handled before (the cage died before
# it could be deleted) is deleted without calling this again. pmnc.request is the current
# request (pmnc.request.remain: the seconds left).

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    sender = request["from"][1] or "<>"
    pmnc.log.message(f"e-mail message {request['message_id']} from {sender}: {request['subject']!r}, "
                     f"{len(request['attachments'])} attachment(s)")


# EOF
