"""Real mail servers for the tests: an SMTP server delivering into Maildirs, and Dovecot
serving those Maildirs over POP3 (test-peers.md §5a).

`mail` (session-wide) and `mail_servers` (per test, for tests that stop a server) are a
`MailServers`: Dovecot (Debian's `dovecot-pop3d`) on a free loopback port as user `mail`,
with users `alice`, `bob` and `carol` (password `secret`), plain POP3 with STLS and POP3S
(implicit TLS), both with a certificate from `pmnc.keys`; and aiosmtpd on a free loopback
port, with STARTTLS and implicit TLS too, delivering each recipient's local part into its
Maildir (`alice@localhost` -> alice's mailbox) and keeping every envelope it received
(`smtp.received`). Both run in this process or as child processes started here, and are
stopped by pid at the end. Tests skip with the reason when Dovecot is not installed.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import free_port, remove_orphans

DOVECOT = "/usr/sbin/dovecot"
PREFIX = "pmnc-mail-"
USERS = ("alice", "bob", "carol")
PASSWORD = "secret"

DOVECOT_CONF = """protocols = pop3
listen = 127.0.0.1
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {folder}/dovecot.log
info_log_path = {folder}/dovecot.log
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{mail}/%u
mail_uid = mail
mail_gid = mail
first_valid_uid = {uid}
last_valid_uid = {uid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/users
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={mail}/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s_port}
    ssl = yes
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
protocol pop3 {{
  pop3_uidl_format = %08Xu%08Xv
}}
"""


class MaildirHandler:
    """aiosmtpd handler: each recipient's local part is a Maildir under `root`, owned by `mail`."""

    seq = itertools.count()

    def __init__(self, root: Path, uid: int, gid: int) -> None:
        self.root, self.uid, self.gid = root, uid, gid
        self.received: list[Any] = []  # the envelopes, in order
        self.refuse_rcpt: set[str] = set()  # recipients answered 550 at RCPT

    def _mkdir(self, path: Path) -> None:
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, self.uid, self.gid)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address.lower() in self.refuse_rcpt:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        body = envelope.original_content.replace(b"\r\n", b"\n")
        for rcpt in envelope.rcpt_tos:
            box = self.root / rcpt.split("@", 1)[0].lower()
            for sub in ("", "tmp", "new", "cur"):
                self._mkdir(box / sub)
            name = f"{time.time_ns()}.P{os.getpid()}Q{next(self.seq)}.pmnc-test"
            tmp = box / "tmp" / name
            tmp.write_bytes(f"Return-Path: <{envelope.mail_from}>\nDelivered-To: {rcpt}\n".encode() + body)
            os.chown(tmp, self.uid, self.gid)
            os.rename(tmp, box / "new" / name)
        self.received.append(envelope)
        return "250 Message accepted for delivery"


class MailServers:
    """Dovecot POP3 (`pop3_port`, `pop3s_port`) and aiosmtpd SMTP (`smtp_port` with
    STARTTLS, `smtps_port` implicit TLS) on 127.0.0.1; `ca_file` verifies both."""

    def __init__(self) -> None:
        if not os.path.exists(DOVECOT):
            pytest.skip(f"no Dovecot ({DOVECOT}, Debian package dovecot-pop3d)")
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            pytest.skip("no aiosmtpd (./setup test installs it)")
        remove_orphans(PREFIX, "dovecot.pid")
        self.folder = Path(tempfile.mkdtemp(prefix=PREFIX))
        os.chmod(self.folder, 0o755)  # dovecot, as mail, reaches the Maildirs below
        (self.folder / "owner.pid").write_text(str(os.getpid()))
        self.user = pwd.getpwnam("mail")
        self.mail = self.folder / "mail"
        self._make_keys()
        self.pop3_port, self.pop3s_port = free_port(), free_port()
        self.smtp_port, self.smtps_port = free_port(), free_port()
        self.handler = MaildirHandler(self.mail, self.user.pw_uid, self.user.pw_gid)
        self._controllers: list[Any] = []
        self.dovecot: subprocess.Popen[bytes] | None = None
        self._write_dovecot_config()
        self.start_pop3()
        self.start_smtp()

    # --- keys ------------------------------------------------------------------------------

    def _make_keys(self) -> None:
        """A CA and a server certificate for 127.0.0.1/localhost, made with pmnc.keys."""
        from pmnc import keys
        keys_dir = self.folder / "keys"
        keys.make_ca(str(keys_dir))
        self.ca_file = keys_dir / "ca.pem"
        self.key_cert_file = Path(keys.make_server(str(keys_dir), "mail", ["127.0.0.1", "localhost"]))
        self.cert_file, self.key_file = keys_dir / "mail.cert.pem", keys_dir / "mail.key.pem"
        _split_pem(self.key_cert_file, self.cert_file, self.key_file)
        for path in (keys_dir, self.cert_file, self.key_file):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.key_cert_file))
        return context

    # --- POP3 ------------------------------------------------------------------------------

    def _write_dovecot_config(self) -> None:
        for sub in ("run", "state"):
            (self.folder / sub).mkdir(exist_ok=True)
        self.mail.mkdir(exist_ok=True)
        os.chown(self.mail, self.user.pw_uid, self.user.pw_gid)
        (self.folder / "users").write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}\n" for u in USERS))
        os.chmod(self.folder / "users", 0o644)
        for user in USERS:
            self.mailbox(user)
        (self.folder / "dovecot.conf").write_text(DOVECOT_CONF.format(
            folder=self.folder, mail=self.mail, uid=self.user.pw_uid, cert=self.cert_file, key=self.key_file,
            pop3_port=self.pop3_port, pop3s_port=self.pop3s_port))

    def start_pop3(self, timeout: float = 30.0) -> None:
        with open(self.folder / "stdout.log", "ab") as out:
            self.dovecot = subprocess.Popen([DOVECOT, "-c", str(self.folder / "dovecot.conf"), "-F"],
                                            stdout=out, stderr=subprocess.STDOUT)
        (self.folder / "dovecot.pid").write_text(str(self.dovecot.pid))
        deadline = time.monotonic() + timeout
        while not self._pop3_answers():
            if self.dovecot.poll() is not None:
                raise RuntimeError(f"dovecot ended with {self.dovecot.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not answer within {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.05)

    def _pop3_answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.pop3_port), timeout=1.0) as s:
                return s.recv(64).startswith(b"+OK")
        except OSError:
            return False

    def stop_pop3(self) -> None:
        if self.dovecot is not None and self.dovecot.poll() is None:
            self.dovecot.terminate()
            try:
                self.dovecot.wait(15)
            except subprocess.TimeoutExpired:
                self.dovecot.kill()
                self.dovecot.wait(15)
        self.dovecot = None

    def log_tail(self) -> str:
        text = ""
        for name in ("dovecot.log", "stdout.log"):
            try:
                text += (self.folder / name).read_text(errors="replace")[-1500:]
            except OSError:
                pass
        return text

    # --- SMTP ------------------------------------------------------------------------------

    def start_smtp(self) -> None:
        from aiosmtpd.controller import Controller
        context = self.server_context()
        plain = Controller(self.handler, hostname="127.0.0.1", port=self.smtp_port, tls_context=context,
                           require_starttls=False, auth_require_tls=False, ready_timeout=10.0,
                           authenticator=_authenticator, auth_exclude_mechanism=["CRAM-MD5"])
        implicit = Controller(self.handler, hostname="127.0.0.1", port=self.smtps_port, ssl_context=context,
                              ready_timeout=10.0, authenticator=_authenticator, auth_require_tls=False,
                              auth_exclude_mechanism=["CRAM-MD5"])
        for controller in (plain, implicit):
            controller.start()
            self._controllers.append(controller)

    def stop_smtp(self) -> None:
        for controller in self._controllers:
            try:
                controller.stop()
            except (AssertionError, RuntimeError):
                pass
        self._controllers.clear()

    # --- mailboxes -------------------------------------------------------------------------

    def mailbox(self, user: str) -> Path:
        box = self.mail / user
        for sub in ("", "tmp", "new", "cur"):
            path = box / sub
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return box

    def deliver(self, user: str, message: bytes | str) -> None:
        """Put a message straight into `user`'s mailbox (no SMTP), as an MTA would."""
        data = message.encode() if isinstance(message, str) else message
        box = self.mailbox(user)
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(MaildirHandler.seq)}.pmnc-test"
        tmp = box / "tmp" / name
        tmp.write_bytes(data.replace(b"\r\n", b"\n"))
        os.chown(tmp, self.user.pw_uid, self.user.pw_gid)
        os.rename(tmp, box / "new" / name)

    def count(self, user: str) -> int:
        """Messages in `user`'s mailbox (new and seen), as the files say."""
        box = self.mail / user
        return sum(1 for sub in ("new", "cur") for p in (box / sub).glob("*") if p.is_file())

    def empty(self, user: str) -> None:
        box = self.mail / user
        for sub in ("new", "cur"):
            for path in (box / sub).glob("*"):
                path.unlink()

    def pop3_config(self, user: str = "alice", **overrides: Any) -> dict[str, Any]:
        """A config_interface_<name>.py dict for `user`'s mailbox."""
        return dict({"protocol": "pop3", "server_address": ("127.0.0.1", self.pop3_port), "username": user,
                     "password": PASSWORD, "interval": 0.2}, **overrides)

    def smtp_config(self, **overrides: Any) -> dict[str, Any]:
        """A config_resource_<name>.py dict for the SMTP server."""
        return dict({"protocol": "smtp", "server_address": ("127.0.0.1", self.smtp_port)}, **overrides)

    def close(self) -> None:
        self.stop_smtp()
        self.stop_pop3()
        shutil.rmtree(self.folder, ignore_errors=True)


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    """SMTP AUTH PLAIN/LOGIN: any of USERS with PASSWORD. `handled=False`: aiosmtpd answers a
    failure itself (535); an object of another type would count as a success."""
    from aiosmtpd.smtp import AuthResult
    login = getattr(auth_data, "login", b"")
    password = getattr(auth_data, "password", b"")
    login = login.decode() if isinstance(login, bytes) else str(login)
    password = password.decode() if isinstance(password, bytes) else str(password)
    return AuthResult(success=login in USERS and password == PASSWORD, handled=False)


def _split_pem(key_cert: Path, cert: Path, key: Path) -> None:
    """Dovecot wants the key and the certificate in files of their own."""
    chunks = _pem_chunks(key_cert.read_text())
    key.write_text("".join(c for c in chunks if "PRIVATE KEY" in c))
    cert.write_text("".join(c for c in chunks if "CERTIFICATE" in c))


def _pem_chunks(text: str) -> list[str]:
    chunks, current = [], []
    for line in text.splitlines(keepends=True):
        current.append(line)
        if line.startswith("-----END"):
            chunks.append("".join(current))
            current = []
    return chunks


@pytest.fixture(scope="session")
def mail() -> Iterator[MailServers]:
    servers = MailServers()
    yield servers
    servers.close()


@pytest.fixture
def mail_servers() -> Iterator[MailServers]:
    servers = MailServers()
    yield servers
    servers.close()

