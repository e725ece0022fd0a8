"""The pop3 interface against a real Dovecot (tests/mail_peer.py): every message taken in one
poll, deleted only after its handler succeeded, a poison message set aside, a crash between
the handler and the deletion not repeating the handler, outages logged once, TLS both ways,
malformed mail never stopping the interface."""

from __future__ import annotations

import email.message
import email.policy
import hashlib
import itertools
import json
import os
import signal
import smtplib
import threading
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from conftest import CageProcess, InProcessCage, config_source, module_source, wait_until, write_file
from mail_peer import MailServers
from pmnc.protocols import pop3
from pmnc.protocols.pop3 import Interface, parse

# Every run of the handler is a line of runs.jsonl in the cage folder, with what it was given
# (contents as [length, sha256]). By subject: "fail" always fails, "fail:N" fails its first N
# runs, "block" waits for the file "go" in the cage folder; anything else succeeds.
HANDLER = module_source("""
    import email.message, email.policy, hashlib, json, os, time
    def _digest(content):
        return [len(content), hashlib.sha256(content).hexdigest()]
    def process_request(request, response):
        here = os.path.dirname(__file__)
        runs = os.path.join(here, "runs.jsonl")
        subject, message = request["subject"], request["message"]
        record = {
            "uidl": request["message_id"], "subject": subject, "from": request["from"],
            "to": request["to"], "cc": request["cc"],
            "date": request["date"].isoformat() if request["date"] is not None else None,
            "text": request["text"], "html": request["html"],
            "inline": {cid: [name, kind, *_digest(content)]
                       for cid, (name, kind, content) in request["inline"].items()},
            "attachments": [[name, kind, *_digest(content)] for name, kind, content in request["attachments"]],
            "defects": request["defects"], "size": len(request["message_bytes"]),
            "message": isinstance(message, email.message.Message) and message.policy is email.policy.compat32,
            "message_subject": str(message["Subject"] or ""), "at": time.monotonic(), "pid": os.getpid(),
        }
        earlier = 0
        if os.path.exists(runs):
            with open(runs) as f:
                earlier = sum(json.loads(line)["uidl"] == request["message_id"] for line in f)
        with open(runs, "a") as f:
            f.write(json.dumps(record) + "\\n")
        if subject == "fail" or (subject.startswith("fail:") and earlier < int(subject[5:])):
            raise RuntimeError(f"failing on purpose, run {earlier + 1}")
        if subject == "block":
            until = time.monotonic() + 60.0
            while not os.path.exists(os.path.join(here, "go")) and time.monotonic() < until:
                time.sleep(0.02)
""", ["process_request"])


def runs(cage_dir: Path) -> list[dict[str, Any]]:
    path = cage_dir / "runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def subjects(cage_dir: Path) -> list[str]:
    return [run["subject"] for run in runs(cage_dir)]


def emptied(servers: MailServers, user: str) -> bool:
    """The mailbox is empty, read twice: a directory listing may miss a file Dovecot is
    renaming (new/ to cur/, or a flag added) at that very moment."""
    return servers.count(user) == 0 and servers.count(user) == 0


def digest(content: bytes) -> list[Any]:
    return [len(content), hashlib.sha256(content).hexdigest()]


def plain(subject: str, body: str = "hello\n", sender: str = "sender@example.com") -> bytes:
    return (f"From: {sender}\nTo: alice@localhost\nSubject: {subject}\nMessage-ID: {make_msgid()}\n"
            f"\n{body}").encode()


def pop3_cage(in_process_cage: Callable[..., InProcessCage], config: dict[str, Any], **kwargs: Any) -> InProcessCage:
    """An in-process cage whose interface pop3_1 (`config`) runs HANDLER."""
    interfaces = kwargs.pop("interfaces", {"pop3_1": config})
    files = {f"interface_{name}.py": HANDLER for name in interfaces}
    return in_process_cage(interfaces=interfaces, files={**files, **kwargs.pop("files", {})}, **kwargs)


def error_lines(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines() if " ERR " in line or line.startswith("ERR")]


@pytest.fixture
def alice(mail: MailServers) -> MailServers:
    """The session's mail servers, alice's mailbox emptied (the tests share it)."""
    mail.empty("alice")
    return mail


# --- a message and its fields -------------------------------------------------------------------------


TEXT = "Добрый день,\n" "счёт во вложении.\n"


def rich_message(image: bytes, attachment: bytes) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = "Счёт № 42 — ünïcödé ✓"
    message["From"] = "Отправитель Ёжиков <sender@example.com>"
    message["To"] = "Алиса <alice@localhost>, bob@localhost"
    message["Cc"] = "Carol Müller <carol@localhost>"
    message["Date"] = "Tue, 05 May 2026 10:00:00 +0200"
    message["Message-ID"] = make_msgid()
    message.set_content(TEXT)
    message.add_alternative('<html><body><p>Добрый день</p><img src="cid:logo@pmnc"></body></html>\n',
                            subtype="html")
    html = message.get_payload()[1]
    html.add_related(image, maintype="image", subtype="png", cid="<logo@pmnc>", filename="logo.png")
    message.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="отчёт 2026.bin")
    return message


def test_every_field_of_a_rich_message_reaches_the_handler(alice: MailServers, in_process_cage: Any) -> None:
    """Non-ASCII names and subject, several recipients, HTML with an inline image, a 5 MB
    attachment: sent over SMTP to three mailboxes, alice's taken by the interface."""
    image, attachment = os.urandom(3000), os.urandom(5 * 1024 * 1024)
    message = rich_message(image, attachment)
    with smtplib.SMTP("127.0.0.1", alice.smtp_port, timeout=30) as smtp:
        smtp.send_message(message, "sender@example.com", ["alice@localhost", "bob@localhost", "carol@localhost"])
    alice.empty("bob")
    alice.empty("carol")
    cage = pop3_cage(in_process_cage, alice.pop3_config("alice"))
    (run,) = wait_until(lambda: runs(cage.cage_dir), 20.0, message="the message handled")
    wait_until(lambda: emptied(alice, "alice"), message="the message deleted")
    assert run["subject"] == "Счёт № 42 — ünïcödé ✓"
    assert run["from"] == ["Отправитель Ёжиков", "sender@example.com"]
    assert run["to"] == [["Алиса", "alice@localhost"], ["", "bob@localhost"]]
    assert run["cc"] == [["Carol Müller", "carol@localhost"]]
    assert run["date"] == "2026-05-05T10:00:00+02:00"
    assert run["text"] == TEXT
    assert run["html"] == '<html><body><p>Добрый день</p><img src="cid:logo@pmnc"></body></html>\n'
    assert run["inline"] == {"logo@pmnc": ["logo.png", "image/png", *digest(image)]}
    assert run["attachments"] == [["отчёт 2026.bin", "application/octet-stream", *digest(attachment)]]
    assert run["defects"] == []
    # the original's fields: the UIDL, and the message as an email.message.Message (compat32)
    assert run["message"] is True and run["message_subject"].startswith("=?utf-8?")
    assert len(run["uidl"]) > 0 and run["size"] > 5 * 1024 * 1024


def test_parse_gives_best_effort_fields_for_malformed_mail() -> None:
    """No socket: the parser on its own never raises, and says what it could not read."""
    _, fields = parse(b"Subject: caf\xe9 \x81\r\nFrom: \xc0\xc1 <a@b>\r\nDate: yesterday\r\n"
                      b"Content-Type: text/plain; charset=x-unknown\r\n\r\nbody \xff\r\n")
    assert fields["subject"] == "caf\xe9 \x81" and fields["from"] == ("\xc0\xc1", "a@b")
    assert fields["date"] is None and fields["text"] == "body \xff\n"
    assert "Date: 'yesterday' is not a date" in fields["defects"]
    assert "text/plain: unknown charset 'x-unknown'" in fields["defects"]
    _, fields = parse(b"Subject: =?x-nope?q?caf=E9?= =?utf-8?b?w6k=?=\r\n\r\n")
    assert fields["subject"] == "caf\xe9\xe9" and "Subject: unknown charset 'x-nope'" in fields["defects"]
    _, fields = parse(b"\x00\x01 not a header\r\n")
    assert fields["subject"] == "" and fields["from"] == ("", "") and fields["to"] == []
    assert fields["text"] == "\x00\x01 not a header\n"


# --- poison mail ----------------------------------------------------------------------------------------


def test_a_poison_message_among_50_is_set_aside_and_the_others_are_handled_once(
        alice: MailServers, in_process_cage: Any) -> None:
    """50 good messages (one of them failing twice first) and one that always fails, all
    waiting when the cage starts: each good one handled once, the poison one run max_failures
    times, at least `interval` apart, then saved under failed_directory and deleted, with one
    ERROR line; the mailbox is empty at the end."""
    poison = plain("fail", "poison body\n")
    for n in range(50):
        alice.deliver("alice", plain("fail:2" if n == 10 else f"good {n}"))
        if n == 25:
            alice.deliver("alice", poison)
    cage = pop3_cage(in_process_cage, alice.pop3_config("alice", interval=0.3, max_failures=3,
                                                        failed_directory="aside"))
    folder = cage.cage_dir / "aside"
    wait_until(lambda: list(folder.glob("*.eml")), 30.0, message="the poison message set aside")
    wait_until(lambda: emptied(alice, "alice"), message="the mailbox empty")
    seen = subjects(cage.cage_dir)
    assert sorted(s for s in seen if s.startswith("good")) == sorted(f"good {n}" for n in range(50) if n != 10)
    assert (seen.count("fail:2"), seen.count("fail")) == (3, 3), runs(cage.cage_dir)
    times = [run["at"] for run in runs(cage.cage_dir) if run["subject"] == "fail"]
    assert all(later - earlier >= 0.3 for earlier, later in itertools.pairwise(times))  # never a tight loop
    (saved,) = folder.glob("*.eml")
    assert saved.read_bytes().replace(b"\r\n", b"\n") == poison
    uidl = runs(cage.cage_dir)[seen.index("fail")]["uidl"]
    assert saved.name == f"{uidl}.eml"
    errors = error_lines(cage.log_text())
    assert len(errors) == 1, errors
    assert f"e-mail message {uidl} set aside after 3 failures, saved as {saved}" in errors[0]
    assert "RuntimeError" in errors[0] and "failing on purpose, run 3" in errors[0]


def test_messages_of_one_poll_run_concurrently(alice: MailServers, in_process_cage: Any) -> None:
    for n in range(12):
        alice.deliver("alice", plain(f"m{n}"))
    handler = HANDLER.replace('    if subject == "block":', '    time.sleep(0.3)\n    if subject == "block":')
    cage = pop3_cage(in_process_cage, alice.pop3_config("alice", concurrency=4),
                     files={"interface_pop3_1.py": handler})
    wait_until(lambda: emptied(alice, "alice"), 20.0, message="the mailbox empty")
    assert sorted(subjects(cage.cage_dir)) == sorted(f"m{n}" for n in range(12))
    starts = sorted(run["at"] for run in runs(cage.cage_dir))
    assert any(later - earlier < 0.3 for earlier, later in itertools.pairwise(starts))  # overlapping runs


# --- a crash between the handler and the deletion -------------------------------------------------------


def test_a_cage_killed_before_its_deletions_commit_does_not_run_a_handled_message_again(
        alice: MailServers, cage_process: Callable[..., CageProcess]) -> None:
    """The first message's handler succeeds (it is marked handled and DELE is sent, but QUIT,
    which commits deletions, never is); the second's blocks; the cage and its supervisor are
    killed with SIGKILL. The server then keeps both. A new cage on the same tree deletes the
    first without running its handler, and runs the second again."""
    alice.deliver("alice", plain("first"))
    alice.deliver("alice", plain("block"))
    first = cage_process(interfaces={"pop3_1": alice.pop3_config("alice")},
                         files={"interface_pop3_1.py": HANDLER}, log_level="INFO")
    wait_until(lambda: subjects(first.cage_dir) == ["first", "block"], 20.0, message="the second handler running")
    os.kill(first.child_pids()[-1], signal.SIGKILL)
    first.kill()
    wait_until(lambda: alice.count("alice") == 2, message="both kept")  # no QUIT: nothing was deleted
    (first.cage_dir / "go").touch()
    second = CageProcess(first.root)
    try:
        second.start()
        wait_until(lambda: emptied(alice, "alice"), 20.0, message="the mailbox empty")
        assert subjects(first.cage_dir) == ["first", "block", "block"]
        assert second.log_text().count("was handled before, deleted without running the handler again") == 1
    finally:
        second.kill()


def test_a_message_in_process_when_the_cage_stops_is_deleted_and_the_next_one_kept(
        alice: MailServers, in_process_cage: Any) -> None:
    """The cage stops while a handler runs (the next message already asked for, pipelined):
    the handler is given its time, its message deleted by the QUIT at the end of the poll; the
    next message is not run, and stays."""
    alice.deliver("alice", plain("block"))
    alice.deliver("alice", plain("after"))
    cage = pop3_cage(in_process_cage, alice.pop3_config("alice"))
    wait_until(lambda: subjects(cage.cage_dir) == ["block"], message="the handler running")
    stopping = threading.Thread(target=cage.stop)
    stopping.start()
    wait_until(lambda: "request intake is closed" in cage.log_text(), message="the intake closed")
    (cage.cage_dir / "go").touch()
    stopping.join(30.0)
    wait_until(lambda: alice.count("alice") == 1, message="one message kept")
    assert subjects(cage.cage_dir) == ["block"]
    assert "interface pop3_1 failed" not in cage.log_text() and not error_lines(cage.log_text())


# --- the server refuses or is away ----------------------------------------------------------------------


def dovecot_auth_failures(servers: MailServers) -> int:
    """Failed logins, as Dovecot's log tells them."""
    return (servers.folder / "dovecot.log").read_text(errors="replace").count("auth failed")


def test_a_wrong_password_is_logged_once_and_fixing_the_config_lets_messages_flow(
        mail_servers: MailServers, in_process_cage: Any) -> None:
    """Dovecot answers each later failed login after ~4 s: two attempts are enough to see that
    the outage is one line, not one per poll."""
    config = mail_servers.pop3_config("alice", connect_timeout=10.0)
    cage = pop3_cage(in_process_cage, dict(config, password="wrong"))
    wait_until(lambda: dovecot_auth_failures(mail_servers) >= 2, 15.0, message="two failed logins")
    refusals = [line for line in cage.log_text().splitlines() if "refused the login" in line]
    assert len(refusals) == 1, refusals
    assert "ERR" in refusals[0] and "pop3://127.0.0.1" in refusals[0] and "[AUTH] Authentication failed" in refusals[0]
    mail_servers.deliver("alice", plain("after the fix"))
    write_file(cage.cage_dir / "config_interface_pop3_1.py", config_source(config))
    wait_until(lambda: subjects(cage.cage_dir) == ["after the fix"], 20.0, message="the message handled")
    wait_until(lambda: emptied(mail_servers, "alice"), message="the message deleted")
    assert sum("refused the login" in line for line in cage.log_text().splitlines()) == 1


def test_a_server_down_at_cage_start_is_logged_once_and_messages_flow_when_it_is_up(
        mail_servers: MailServers, in_process_cage: Any) -> None:
    mail_servers.stop_pop3()
    mail_servers.deliver("alice", plain("waiting"))
    cage = pop3_cage(in_process_cage, mail_servers.pop3_config("alice", interval=0.1))
    wait_until(lambda: "cannot connect to pop3://127.0.0.1" in cage.log_text(), message="the outage logged")
    mail_servers.start_pop3()  # about a second: polls keep failing meanwhile
    wait_until(lambda: subjects(cage.cage_dir) == ["waiting"], 20.0, message="the message handled")
    wait_until(lambda: "can be reached again" in cage.log_text(), message="the end of the outage logged")
    log_text = cage.log_text()
    assert log_text.count("cannot connect to pop3://127.0.0.1") == 1
    assert log_text.count("can be reached again") == 1


# --- TLS ------------------------------------------------------------------------------------------------


def test_stls_and_implicit_tls_verify_the_server(mail: MailServers, in_process_cage: Any) -> None:
    """bob's mailbox over STLS, carol's over POP3S, both verified with the CA the keys were
    made with; a third interface trusting only the system's CAs refuses the server."""
    for user in ("bob", "carol"):
        mail.empty(user)
        mail.deliver(user, plain(f"for {user}"))
    ca = str(mail.ca_file)
    cage = pop3_cage(in_process_cage, {}, interfaces={
        "pop3_1": mail.pop3_config("bob", stls=True, ssl_ca_cert_file=ca, ssl_protocol="TLSv1"),
        "pop3_2": mail.pop3_config("carol", server_address=("127.0.0.1", mail.pop3s_port), ssl_ca_cert_file=ca,
                                   ssl_server_hostname="localhost"),
        "pop3_3": mail.pop3_config("alice", stls=True, interval=5.0),
    })
    wait_until(lambda: sorted(subjects(cage.cage_dir)) == ["for bob", "for carol"], message="both handled")
    wait_until(lambda: emptied(mail, "bob") and emptied(mail, "carol"), message="both deleted")
    log_text = cage.log_text()
    assert "interface pop3_2 polls pop3s://127.0.0.1" in log_text
    assert "config_interface_pop3_1.py: ssl_protocol: 'TLSv1' is not used" in log_text
    refused = wait_until(lambda: [line for line in cage.log_text().splitlines() if "interface pop3_3:" in line],
                         message="the untrusted server refused")
    assert "certificate failed verification" in refused[0]


# --- malformed mail ---------------------------------------------------------------------------------------

MALFORMED = {
    "8-bit garbage in headers": b"Subject: caf\xe9 \xff\xfe\nFrom: \xc0\xc1\xc2 <garbage@example.com>\n\nbody\n",
    "unknown charsets": b"Subject: =?x-martian?q?hello?=\nContent-Type: text/plain; charset=x-martian\n\ntext \xe9\n",
    "no boundary": b"Subject: no boundary\nContent-Type: multipart/mixed\n\n--x\nContent-Type: text/plain\n\nlost\n",
    "broken MIME": b"Subject: broken MIME\nDate: yesterday at noon\nContent-Type: multipart/mixed; boundary=zz\n\n"
                   b"--zz\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n@@not base64!!\n"
                   b"--zz\nContent-Type: image/png; name=\"=?utf-8?b?0YTQsNC50LsucG5n?=\"\n"
                   b"Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n",
    "no headers": b"just a line, no headers at all\n",
    "long lines": b"Subject: " + b"s" * 5000 + b"\n\n" + b"x" * 300_000 + b"\n",
}


def test_malformed_messages_reach_the_handler_as_best_effort_data(alice: MailServers, in_process_cage: Any) -> None:
    """Each kind reaches the handler with what could be read (and its defects); a message
    bigger than max_message_size is set aside unread; the good one after them is handled."""
    for raw in MALFORMED.values():
        alice.deliver("alice", raw)
    big = plain("too big", "y" * 600_000 + "\n")
    alice.deliver("alice", big)
    alice.deliver("alice", plain("good after"))
    cage = pop3_cage(in_process_cage, alice.pop3_config("alice", max_message_size=500_000))
    wait_until(lambda: emptied(alice, "alice"), 20.0, message="the mailbox empty")
    got = {run["subject"][:20]: run for run in runs(cage.cage_dir)}
    assert len(runs(cage.cage_dir)) == len(MALFORMED) + 1 and "good after" in got
    garbage = got["café \xff\xfe"]
    assert garbage["from"] == ["ÀÁÂ", "garbage@example.com"] and garbage["text"] == "body\n"
    assert any("8-bit characters" in d for d in garbage["defects"])
    martian = got["hello"]
    assert martian["text"] == "text é\n" and "text/plain: unknown charset 'x-martian'" in martian["defects"]
    assert got["no boundary"]["text"] is None and got["no boundary"]["attachments"][0][1] == "multipart/mixed"
    broken = got["broken MIME"]
    png = b"\x89PNG\r\n\x1a\n"
    assert broken["date"] is None and broken["attachments"] == [["файл.png", "image/png", *digest(png)]]
    assert "Date: 'yesterday at noon' is not a date" in broken["defects"]
    assert got[""]["text"] == "just a line, no headers at all\n" and got[""]["from"] == ["", ""]
    assert got["s" * 20]["text"] == "x" * 300_000 + "\n"
    (saved,) = (cage.cage_dir / "pop3_failed" / "pop3_1").glob("*.eml")
    assert saved.read_bytes().replace(b"\r\n", b"\n") == big
    (error,) = error_lines(cage.log_text())
    assert "is bigger than max_message_size (500000)" in error and "the handler not run" in error


# --- the config ---------------------------------------------------------------------------------------------


def test_the_template_and_the_original_keys_are_understood() -> None:
    root = Path(__file__).resolve().parent.parent / "cages" / ".shared"
    namespace: dict[str, Any] = {}
    exec((root / "config_interface_pop3_1.py").read_text(), namespace)
    template = dict(namespace["config"])
    assert template.pop("protocol") == "pop3"
    Interface.keys.read(template, "config_interface_pop3_1.py")
    # the original's config_interface_email_1.py, as it was
    original = dict(server_address=("mail.domain.com", 110), connect_timeout=3.0, ssl_key_cert_file=None,
                    ssl_ca_cert_file=None, ssl_ciphers=None, ssl_protocol=None, username="user",
                    password="pass", interval=60.0)
    settings = Interface.keys.read(original, "config_interface_email_1.py")
    assert settings["max_failures"] == 5 and settings["concurrency"] == 1 and not settings["stls"]
    assert "message_id" in (root / "interface_pop3_1.py").read_text()
    assert pop3.__all__ == ["Interface", "parse"]


def test_a_config_without_a_login_is_refused_naming_the_file(mail: MailServers, in_process_cage: Any) -> None:
    config = mail.pop3_config("alice")
    del config["password"]
    cage = pop3_cage(in_process_cage, config)
    line = wait_until(lambda: [x for x in cage.log_text().splitlines() if "failed to start" in x],
                      message="the refusal")[0]
    assert "config_interface_pop3_1.py: username and password must be given" in line


def test_the_original_message_class_is_kept() -> None:
    message, _ = parse(b"Subject: x\r\n\r\ny\r\n")
    assert type(message) is email.message.Message and message.policy is email.policy.compat32


def test_the_shipped_handler_template_handles_a_message(alice: MailServers, in_process_cage: Any) -> None:
    template = (Path(__file__).resolve().parent.parent / "cages" / ".shared" / "interface_pop3_1.py").read_text()
    alice.deliver("alice", plain("from the template"))
    cage = in_process_cage(interfaces={"pop3_1": alice.pop3_config("alice")},
                           files={"interface_pop3_1.py": template})
    wait_until(lambda: emptied(alice, "alice"), message="the message deleted")
    assert "from sender@example.com: 'from the template', 0 attachment(s)" in cage.log_text()


def test_an_original_email_interface_config_runs_as_pop3(alice: MailServers, in_process_cage: Any) -> None:
    """A config_interface file written for the original (`protocol="email"`, its keys) serves."""
    original = dict(protocol="email", server_address=("127.0.0.1", alice.pop3_port), connect_timeout=3.0,
                    ssl_key_cert_file=None, ssl_ca_cert_file=None, ssl_ciphers=None, ssl_protocol=None,
                    username="alice", password="secret", interval=0.2)
    cage = pop3_cage(in_process_cage, original, interfaces={"email_1": original})
    alice.deliver("alice", plain("from the original"))
    wait_until(lambda: subjects(cage.cage_dir) == ["from the original"], 15.0, message="the message handled")
    wait_until(lambda: emptied(alice, "alice"), 10.0, message="the mailbox emptied")


def test_mail_sent_by_the_smtp_resource_arrives_whole_at_the_pop3_interface(
        alice: MailServers, in_process_cage: Any) -> None:
    """The two halves together: what `xa.smtp_1.send` sends (UTF-8 names and subject, several
    recipients, cc and bcc, HTML with an inline image, a 5 MB attachment) is what the pop3
    interface's handler gets, field by field."""
    for user in ("bob", "carol", "audit"):
        alice.empty(user)
    image, attachment = os.urandom(3000), os.urandom(5 * 1024 * 1024)
    cage = pop3_cage(in_process_cage, alice.pop3_config("alice"),
                     files={"config_resource_smtp_1.py": config_source(alice.smtp_config())})
    pmnc = cage.cage.runtime.pmnc("test")
    from pmnc.request import fake_request
    fake_request(30.0)
    xa = pmnc.transaction.create()
    xa.smtp_1.send("Отправитель Ёжиков <sender@example.com>", "Алиса <alice@localhost>, bob@localhost",
                   "Счёт № 42 — ünïcödé ✓", TEXT, None,
                   (("отчёт 2026.bin", "application/octet-stream", attachment),),
                   (("text/html", '<p>Добрый день</p><img src="cid:{logo.png}">\n',
                     (("logo.png", "image/png", image),)),),
                   cc="Carol Müller <carol@localhost>", bcc=["audit@localhost"])
    xa.execute()
    (run,) = wait_until(lambda: runs(cage.cage_dir), 30.0, message="the message handled")
    assert run["subject"] == "Счёт № 42 — ünïcödé ✓"
    assert run["from"] == ["Отправитель Ёжиков", "sender@example.com"]
    assert run["to"] == [["Алиса", "alice@localhost"], ["", "bob@localhost"]]
    assert run["cc"] == [["Carol Müller", "carol@localhost"]]
    assert run["text"] == TEXT
    ((cid, inline),) = run["inline"].items()
    assert inline == ["logo.png", "image/png", *digest(image)]
    assert run["html"] == f'<p>Добрый день</p><img src="cid:{cid}">\n'
    assert run["attachments"] == [["отчёт 2026.bin", "application/octet-stream", *digest(attachment)]]
    assert run["defects"] == []
    assert all(alice.count(user) == 1 for user in ("bob", "carol", "audit"))  # bcc delivered, in no header
    wait_until(lambda: emptied(alice, "alice"), message="alice's copy deleted")
