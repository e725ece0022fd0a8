"""The smtp resource against a real SMTP server (aiosmtpd) delivering into Maildirs that
Dovecot serves over POP3 (tests/mail_peer.py); what arrives is read with plain poplib."""

from __future__ import annotations

import os
import poplib
import re
import smtplib
import socket
import uuid
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, InProcessCage, config_source, wait_until
from mail_peer import PASSWORD, MailServers
from pg_peer import PgServer
from pmnc import keys
from pmnc.errors import (
    ConfigError,
    DeadlineError,
    ResourceError,
    ResourceInputParameterError,
    TransactionExecutionError,
)
from pmnc.protocols import smtp
from pmnc.request import fake_request

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + b"\x00\x1f\x15\xc4\x89" * 3


# --- helpers --------------------------------------------------------------------------------------


def fetch(mail: MailServers, user: str) -> list[EmailMessage]:
    """Every message in `user`'s mailbox, read (and deleted) with plain poplib."""
    pop = poplib.POP3("127.0.0.1", mail.pop3_port, timeout=10.0)
    try:
        pop.user(user)
        pop.pass_(PASSWORD)
        count = pop.stat()[0]
        messages = []
        for number in range(1, count + 1):
            raw = b"\r\n".join(pop.retr(number)[1]) + b"\r\n"
            messages.append(BytesParser(policy=policy.default).parsebytes(raw))
            pop.dele(number)
        return messages
    finally:
        pop.quit()


def one_message(mail: MailServers, user: str) -> EmailMessage:
    wait_until(lambda: mail.count(user) >= 1, message=f"a message for {user}")
    (message,) = fetch(mail, user)
    return message


def start_cage(in_process_cage: Callable[..., InProcessCage], **resources: dict[str, Any]) -> tuple[InProcessCage, Any]:
    """A cage with config_resource_<name>.py for each of `resources`; its `pmnc` for a test module."""
    files = {f"config_resource_{name}.py": config_source(config) for name, config in resources.items()}
    cage = in_process_cage(files=files, log_level="INFO")
    fake_request(10.0)
    return cage, cage.cage.runtime.pmnc("test")


def settled(cage: InProcessCage, name: str) -> bool:
    """No connection of the pool is in use: every participant has committed or rolled back."""
    found = re.search(r"connections=(\d+)/\d+ free=(\d+)", repr(cage.cage.runtime.resources.get(name)))
    assert found is not None
    return found.group(1) == found.group(2)


def unique(text: str = "subject") -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


@pytest.fixture
def boxes(mail: MailServers) -> Iterator[MailServers]:
    """The session's mail servers, with empty mailboxes and no refused recipients."""
    for user in ("alice", "bob", "carol"):
        mail.empty(user)
    yield mail
    mail.handler.refuse_rcpt.clear()


# --- the message (no server) --------------------------------------------------------------------


def test_the_body_is_dot_stuffed_with_crlf_line_ends() -> None:
    assert smtp.dot_stuffed(b".\n..\nx.\n.y") == b"..\r\n...\r\nx.\r\n..y\r\n"
    assert smtp.dot_stuffed(b"a\rb\r\n.\r\n") == b"a\r\nb\r\n..\r\n"
    mail = smtp.compose("a@b.c", "d@e.f", "s", "text", {"X-Dot": "."})
    assert b"\r\n.\r\n" not in mail.data and mail.data.endswith(b"\r\n")
    assert not re.search(rb"(?<!\r)\n", mail.data)


def test_the_layout_is_the_originals() -> None:
    def layout(message: EmailMessage) -> Any:
        if message.is_multipart():
            return (message.get_content_type(), [layout(p) for p in message.iter_parts()])  # type: ignore[arg-type]
        return message.get_content_type()

    def parsed(*args: Any) -> EmailMessage:
        return BytesParser(policy=policy.default).parsebytes(smtp.compose("a@b.c", "d@e.f", "s", *args).data)

    jpg = (("x.jpg", "image/jpeg", b"JPEG"),)
    html = (("text/html", "<img src='cid:{x.jpg}'>", jpg),)
    assert layout(parsed("t")) == ("multipart/mixed", ["text/plain"])
    assert layout(parsed("t", {}, jpg)) == ("multipart/mixed", ["text/plain", "image/jpeg"])
    assert layout(parsed("t", {}, (), (("text/html", "<p/>", ()),))) == \
        ("multipart/alternative", ["text/plain", "text/html"])
    assert layout(parsed("t", {}, (), html)) == \
        ("multipart/alternative", ["text/plain", ("multipart/related", ["text/html", "image/jpeg"])])
    assert layout(parsed("t", None, jpg, html)) == \
        ("multipart/mixed", [("multipart/alternative", ["text/plain", ("multipart/related", ["text/html",
                                                                                             "image/jpeg"])]),
                             "image/jpeg"])
    message = parsed("t", {}, (), html)
    related: Any = list(message.iter_parts())[1]
    html_part, image = related.iter_parts()
    assert html_part.get_content() == f"<img src='cid:{image['Content-ID'][1:-1]}'>"
    assert related.get_param("type") == "text/html"


def test_the_template_holds_only_known_keys() -> None:
    namespace: dict[str, Any] = {}
    exec((ROOT / "cages" / ".shared" / "config_resource_smtp_1.py").read_text(), namespace)
    config = {k: v for k, v in namespace["config"].items() if not k.startswith("pool__") and k != "protocol"}
    assert namespace["config"]["protocol"] == "smtp"
    smtp.KEYS.read(config, "config_resource_smtp_1.py")


def test_bad_config_is_refused_naming_the_file() -> None:
    with pytest.raises(ConfigError, match=r"config_resource_mail\.py: unknown config key: conect_timeout"):
        smtp.Resource("mail/1", {"server_address": ("127.0.0.1", 25), "conect_timeout": 1.0})
    with pytest.raises(ConfigError, match=r"config_resource_mail\.py: auth_method must be"):
        smtp.Resource("mail/1", {"server_address": ("127.0.0.1", 25), "auth_method": "CRAM-MD5"})
    with pytest.raises(ConfigError, match=r"config_resource_mail\.py: encoding must be"):
        smtp.Resource("mail/1", {"server_address": ("127.0.0.1", 25), "encoding": "no-such-charset"})
    with pytest.raises(ConfigError, match=r"config_resource_mail\.py: give both username and password"):
        smtp.Resource("mail/1", {"server_address": ("127.0.0.1", 25), "username": "bob"})


# --- sending ---------------------------------------------------------------------------------------


def test_a_message_arrives_with_every_field(boxes: MailServers, in_process_cage: Callable[..., InProcessCage]) -> None:
    _, pmnc = start_cage(in_process_cage, smtp_1=boxes.smtp_config())
    subject = unique("Тема: проверка ✓ — ünïcode subject that is long enough to be folded over several lines")
    text = "Привет!\n.\n..two dots\n.leading dot\r\nno newline at the end."
    html = '<p>Привет, <img src="cid:{logo.png}" alt="логотип"></p>'
    big = os.urandom(5 * 1024 * 1024)
    message_id = pmnc.transaction.smtp_1.send(
        "Отправитель Тест <sender@example.com>", "Алиса Кэрролл <alice@localhost>", subject, text,
        {"X-Note": "значение", "Reply-To": "Ответ <reply@example.com>"},
        (("отчёт 2024.bin", "application/octet-stream", big),),
        (("text/html", html, (("logo.png", "image/png", PNG),)),))
    message = one_message(boxes, "alice")
    assert message["Message-ID"] == message_id
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Отправитель Тест", "sender@example.com")
    (to,) = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Алиса Кэрролл", "alice@localhost")
    assert message["Subject"] == subject
    assert message["X-Note"] == "значение"
    assert message["Reply-To"].addresses[0].display_name == "Ответ"
    assert message["Date"].datetime is not None and message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/mixed"
    alternative, attachment = message.iter_parts()
    plain, related = alternative.iter_parts()
    assert plain.get_content_type() == "text/plain" and plain.get_content() == text  # byte for byte
    html_part, image = related.iter_parts()
    cid = image["Content-ID"]
    assert re.fullmatch(r"<[^<>@\s]+@example\.com>", cid)
    assert html_part.get_content() == html.replace("cid:{logo.png}", f"cid:{cid[1:-1]}")
    assert image.get_content_type() == "image/png" and image.get_content() == PNG
    assert image.get_filename() == "logo.png" and image.get_content_disposition() == "inline"
    assert attachment.get_filename() == "отчёт 2024.bin" and attachment.get_content_disposition() == "attachment"
    assert attachment.get_content() == big
    assert boxes.handler.received[-1].mail_from == "sender@example.com"


def test_several_recipients_with_cc_and_bcc(boxes: MailServers, in_process_cage: Callable[..., InProcessCage]) -> None:
    _, pmnc = start_cage(in_process_cage, smtp_1=boxes.smtp_config())
    subject = unique()
    pmnc.transaction.smtp_1.send("sender@example.com", ["Alice <alice@localhost>", "Nobody Else <alice@localhost>"],
                                 subject, "to all", cc="Боб <bob@localhost>", bcc="carol@localhost")
    messages = {user: one_message(boxes, user) for user in ("alice", "bob", "carol")}
    for message in messages.values():
        assert message["Subject"] == subject and message.get_body().get_content() == "to all"  # type: ignore[union-attr]
        assert [a.addr_spec for a in message["To"].addresses] == ["alice@localhost", "alice@localhost"]
        assert [(a.display_name, a.addr_spec) for a in message["Cc"].addresses] == [("Боб", "bob@localhost")]
        assert "Bcc" not in message and "carol" not in message["To"] + message["Cc"]
    assert boxes.handler.received[-1].rcpt_tos == ["alice@localhost", "bob@localhost", "carol@localhost"]
    assert boxes.count("alice") == 0, "one copy per mailbox, however often it is named"


def test_an_original_style_call_works_unchanged(boxes: MailServers,
                                                in_process_cage: Callable[..., InProcessCage]) -> None:
    """config_resource_email_1.py and the calls as the original's sample has them."""
    original = dict(protocol="email", server_address=("127.0.0.1", boxes.smtp_port), connect_timeout=3.0,
                    ssl_key_cert_file=None, ssl_ca_cert_file=None, ssl_ciphers=None, ssl_protocol=None,
                    encoding="windows-1251", helo="hostname", auth_method=None, username=None, password=None)
    _, pmnc = start_cage(in_process_cage, email_1=original)
    pmnc.transaction.email_1.send("alice@localhost", "alice@localhost", "subject", "message text")
    simple = one_message(boxes, "alice")
    (text,) = simple.iter_parts()
    assert text.get_content() == "message text" and text.get_content_disposition() == "inline"
    xa = pmnc.transaction.create()
    xa.email_1.send("From <alice@localhost>", "To <alice@localhost>", "тема", "текст",
                    {"X-Name": "Value"},
                    (("foo.jpg", "image/jpeg", b"JPEG"),),
                    (("application/pdf", b"PDF", ()),
                     ("text/html", b"<html><img src=\"cid:{bar.jpg}\"></html>",
                      (("bar.jpg", "image/jpeg", b"JPEG"),))))
    xa.execute()
    message = one_message(boxes, "alice")
    assert message["Subject"] == "тема" and message["X-Name"] == "Value"
    assert message["From"].addresses[0].display_name == "From"
    alternative, attachment = message.iter_parts()
    plain, pdf, related = alternative.iter_parts()
    assert plain.get_content_charset() == "windows-1251" and plain.get_content() == "текст"
    assert pdf.get_content_type() == "application/pdf" and pdf.get_content() == b"PDF"
    html, image = related.iter_parts()
    assert html.get_payload(decode=True) == f'<html><img src="cid:{image["Content-ID"][1:-1]}"></html>'.encode()
    assert image.get_filename() == "bar.jpg" and image.get_content() == b"JPEG"
    assert attachment.get_filename() == "foo.jpg" and attachment.get_content() == b"JPEG"


# --- transactions ---------------------------------------------------------------------------------


def test_rollback_after_send_delivers_nothing(boxes: MailServers,
                                              in_process_cage: Callable[..., InProcessCage]) -> None:
    cage, pmnc = start_cage(in_process_cage, smtp_1=boxes.smtp_config())
    received = len(boxes.handler.received)

    def refuse_when_all_are_in(xa: Any, results: list[Any]) -> Any:
        if xa.NoValue in results:
            return None
        raise RuntimeError("changed my mind")  # every message is in DATA, waiting for its "."

    xa = pmnc.transaction.create(accept=refuse_when_all_are_in)
    xa.smtp_1.send("sender@example.com", "alice@localhost", unique(), "never")
    xa.smtp_1.send("sender@example.com", "bob@localhost", unique(), "never" * 100000)
    with pytest.raises(RuntimeError, match="changed my mind"):
        xa.execute()
    wait_until(lambda: settled(cage, "smtp_1"), message="both participants rolled back")
    wait_until(lambda: cage.log_text().count("e-mail message has been aborted") == 2, message="both aborted")
    assert len(boxes.handler.received) == received
    assert boxes.count("alice") == 0 and boxes.count("bob") == 0
    marker = unique()
    pmnc.transaction.smtp_1.send("sender@example.com", "alice@localhost", marker, "this one")
    assert one_message(boxes, "alice")["Subject"] == marker, "only the committed message has come"
    assert len(boxes.handler.received) == received + 1


@pytest.fixture
def table(pg: PgServer) -> Iterator[str]:
    name = f"mail_{uuid.uuid4().hex[:8]}"
    pg.query(f"CREATE TABLE {name} (id int PRIMARY KEY, subject text NOT NULL)")
    yield name
    pg.query(f"DROP TABLE {name}")


def test_with_postgresql_both_commit_or_neither(boxes: MailServers, pg: PgServer, table: str,
                                                in_process_cage: Callable[..., InProcessCage]) -> None:
    cage, pmnc = start_cage(in_process_cage, smtp_1=boxes.smtp_config(), db=pg.config())

    def send_and_insert(row: int, to: str) -> str:
        subject = unique()
        xa = pmnc.transaction.create()
        xa.smtp_1.send("sender@example.com", to, subject, "with a row")
        xa.db.execute(f"INSERT INTO {table} (id, subject) VALUES ({{id}}, {{subject}})", id=row, subject=subject)
        xa.execute()
        return subject

    subject = send_and_insert(1, "alice@localhost")  # both
    assert one_message(boxes, "alice")["Subject"] == subject
    assert pg.query(f"SELECT subject FROM {table}") == [(subject,)]

    with pytest.raises(ResourceError):  # the database refuses: no mail
        send_and_insert(1, "alice@localhost")
    wait_until(lambda: settled(cage, "smtp_1"), message="the mail rolled back")
    assert boxes.count("alice") == 0

    boxes.handler.refuse_rcpt.add("nobody@localhost")
    with pytest.raises(ResourceError) as info:  # the mail server refuses: no row
        send_and_insert(2, "alice@localhost, nobody@localhost")
    assert info.value.code == 550
    wait_until(lambda: settled(cage, "db"), message="the insert rolled back")
    assert pg.query(f"SELECT count(*) FROM {table}") == [(1,)]
    assert boxes.count("alice") == 0


# --- errors ---------------------------------------------------------------------------------------


def test_a_refused_recipient_is_a_550_naming_it(boxes: MailServers,
                                                in_process_cage: Callable[..., InProcessCage]) -> None:
    cage, pmnc = start_cage(in_process_cage, smtp_1=boxes.smtp_config())
    received = len(boxes.handler.received)
    boxes.handler.refuse_rcpt.add("nobody@localhost")
    with pytest.raises(ResourceError) as info:
        pmnc.transaction.smtp_1.send("sender@example.com", "alice@localhost, Nobody <nobody@localhost>",
                                     unique(), "not for anybody")
    error = info.value
    assert error.code == 550 and error.recoverable and "recipient nobody@localhost refused" in str(error)
    assert not error.terminal and "connections=1/" in repr(cage.cage.runtime.resources.get("smtp_1")), \
        "the connection is kept (RSET)"
    pmnc.transaction.smtp_1.send("sender@example.com", "alice@localhost", "after RSET", "on the same connection")
    assert one_message(boxes, "alice")["Subject"] == "after RSET"
    assert len(boxes.handler.received) == received + 1


def test_bad_input_is_refused_before_anything_is_sent(boxes: MailServers,
                                                      in_process_cage: Callable[..., InProcessCage]) -> None:
    _, pmnc = start_cage(in_process_cage, smtp_1=boxes.smtp_config())
    received = len(boxes.handler.received)
    good = ("sender@example.com", "alice@localhost", "subject", "text")
    bad_calls: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        (("sender@example.com", "alice@localhost", 123, "text"), {}, "subject must be str"),
        (("sender@example.com", "alice@localhost", "subject", b"text"), {}, "text must be str"),
        (("sender@example.com", "not an address", "subject", "text"), {}, "malformed address"),
        (("sender@example.com", "alice@", "subject", "text"), {}, "malformed address"),
        (("sender@example.com, other@example.com", "alice@localhost", "s", "t"), {}, "from_addr must be one address"),
        (("sender@example.com", "", "subject", "text"), {}, "no recipient"),
        (("sender@example.com", "alice@localhost", "sub\r\nBcc: x@y.z", "text"), {}, "header Subject"),
        ((*good, {"X-A": "b\nc"}), {}, "header X-A"),
        ((*good, {"Bcc": "x@y.z"}), {}, "Bcc is set by send"),
        ((*good, None, (("a.bin", "no type", b""),)), {}, "is not a MIME type"),
        ((*good, None, (("a.jpg", "image/jpeg", "text for a jpeg"),)), {}, "must be bytes"),
        ((*good, None, None, (("text/html", 42, ()),)), {}, "is not (mime_type"),
        (good, {"cc": 42}, "cc must be a str or a list"),
        (good, {"bcc": ["ü@example.com"]}, "malformed address"),
    ]
    for args, kwargs, words in bad_calls:
        with pytest.raises(ResourceInputParameterError, match=re.escape(words)):
            pmnc.transaction.smtp_1.send(*args, **kwargs)
    assert len(boxes.handler.received) == received


def test_a_wrong_password_is_535(boxes: MailServers, in_process_cage: Callable[..., InProcessCage]) -> None:
    with smtplib.SMTP("127.0.0.1", boxes.smtp_port, timeout=5.0) as bare:  # the peer itself refuses it
        try:
            bare.login("bob", "wrong")
        except smtplib.SMTPAuthenticationError:
            pass
        else:
            pytest.fail("the SMTP peer took a wrong password: tests/mail_peer.py's _authenticator must return "
                        "aiosmtpd.smtp.AuthResult(success=..., handled=False)")
    _, pmnc = start_cage(in_process_cage,
                         plain=boxes.smtp_config(auth_method="PLAIN", username="bob", password=PASSWORD),
                         login=boxes.smtp_config(auth_method="LOGIN", username="bob", password=PASSWORD),
                         wrong_plain=boxes.smtp_config(auth_method="PLAIN", username="bob", password="wrong"),
                         wrong_login=boxes.smtp_config(auth_method="LOGIN", username="bob", password="wrong"))
    for name in ("plain", "login"):
        getattr(pmnc.transaction, name).send("sender@example.com", "bob@localhost", f"via {name}", "authenticated")
        assert one_message(boxes, "bob")["Subject"] == f"via {name}"
    for name in ("wrong_plain", "wrong_login"):
        with pytest.raises(ResourceError) as info:
            getattr(pmnc.transaction, name).send("sender@example.com", "bob@localhost", "never", "never")
        assert info.value.code == 535 and "authenticating" in str(info.value)
    assert boxes.count("bob") == 0


def test_starttls_and_implicit_tls_verify_the_server(boxes: MailServers, tmp_path: Path,
                                                      in_process_cage: Callable[..., InProcessCage]) -> None:
    keys.make_ca(str(tmp_path / "other"))
    other_ca = str(tmp_path / "other" / "ca.pem")
    ca = str(boxes.ca_file)
    _, pmnc = start_cage(
        in_process_cage,
        starttls=boxes.smtp_config(starttls=True, ssl_ca_cert_file=ca, auth_method="LOGIN", username="carol",
                                   password=PASSWORD),
        implicit=boxes.smtp_config(server_address=("127.0.0.1", boxes.smtps_port), ssl_ca_cert_file=ca),
        by_name=boxes.smtp_config(server_address=("127.0.0.1", boxes.smtps_port), ssl_ca_cert_file=ca,
                                  ssl_server_hostname="localhost"),
        wrong_ca=boxes.smtp_config(starttls=True, ssl_ca_cert_file=other_ca),
        wrong_ca_implicit=boxes.smtp_config(server_address=("127.0.0.1", boxes.smtps_port), ssl_ca_cert_file=other_ca),
        wrong_name=boxes.smtp_config(server_address=("127.0.0.1", boxes.smtps_port), ssl_ca_cert_file=ca,
                                     ssl_server_hostname="mail.example.com"))
    for name in ("starttls", "implicit", "by_name"):
        getattr(pmnc.transaction, name).send("sender@example.com", "carol@localhost", f"over {name}", "secret text")
        assert one_message(boxes, "carol")["Subject"] == f"over {name}"
    for name in ("wrong_ca", "wrong_ca_implicit", "wrong_name"):
        with pytest.raises(ResourceError, match="failed verification") as info:
            getattr(pmnc.transaction, name).send("sender@example.com", "carol@localhost", "never", "never")
        assert info.value.recoverable
    assert boxes.count("carol") == 0


def test_a_server_down_is_recoverable_and_its_return_is_noticed(
        mail_servers: MailServers, in_process_cage: Callable[..., InProcessCage]) -> None:
    _, pmnc = start_cage(in_process_cage, smtp_1=mail_servers.smtp_config())
    pmnc.transaction.smtp_1.send("sender@example.com", "alice@localhost", "before", "a pooled connection")
    assert one_message(mail_servers, "alice")["Subject"] == "before"
    mail_servers.stop_smtp()
    with pytest.raises(ResourceError) as info:
        pmnc.transaction.smtp_1.send("sender@example.com", "alice@localhost", "while down", "never")
    assert info.value.recoverable and "127.0.0.1:" in str(info.value)
    mail_servers.start_smtp()
    pmnc.transaction.smtp_1.send("sender@example.com", "alice@localhost", "after", "a new connection")
    assert one_message(mail_servers, "alice")["Subject"] == "after"


def test_a_deadline_too_short_is_a_clear_error_and_delivers_nothing(
        boxes: MailServers, pg: PgServer, in_process_cage: Callable[..., InProcessCage]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (in the backlog), never greets
        cage, pmnc = start_cage(in_process_cage, smtp_1=boxes.smtp_config(),
                                silent=boxes.smtp_config(server_address=silent.getsockname()), db=pg.config())
        fake_request(0.5)
        with pytest.raises(ResourceError) as info:
            pmnc.transaction.silent.send("sender@example.com", "alice@localhost", "never", "never")
    assert isinstance(info.value, DeadlineError) and info.value.recoverable
    assert str(info.value).startswith("request deadline connecting (127.0.0.1:")

    received = len(boxes.handler.received)
    fake_request(1.0)
    xa = pmnc.transaction.create()  # the mail waits for its "." while the database takes too long
    xa.smtp_1.send("sender@example.com", "alice@localhost", "never", "never")
    xa.db.execute("SELECT pg_sleep(3)")
    with pytest.raises(TransactionExecutionError, match="request deadline"):
        xa.execute()
    wait_until(lambda: settled(cage, "smtp_1"), message="the mail rolled back")
    assert len(boxes.handler.received) == received and boxes.count("alice") == 0
    fake_request(10.0)
    pmnc.transaction.smtp_1.send("sender@example.com", "alice@localhost", "in time", "delivered")
    assert one_message(boxes, "alice")["Subject"] == "in time"
