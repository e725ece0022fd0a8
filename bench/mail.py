"""Benchmark the smtp resource and the pop3 interface against bare smtplib and poplib, on the same servers.

    .venv/bin/python bench/mail.py [--sends 1000] [--send-warmup 50] [--messages 2000] [--warmup 50]
                                   [--size 100] [--interval 0.2] [--concurrency 1] [--rounds 3]
                                   [--cpus same|apart] [--only sends|receiving] [--smtp-in-process] [--keep]

Needs Dovecot (Debian's dovecot-pop3d), aiosmtpd and pytest, and root: the servers are
started as the tests start them (tests/mail_peer.py's MailServers: Dovecot POP3 on a free
loopback port serving Maildirs, aiosmtpd delivering into them). By default the SMTP server
runs in a child process of its own (this script with `--serve-smtp`, the same handler and
settings as MailServers' plain server), so that this process's CPU is the client's alone;
`--smtp-in-process` keeps MailServers' own, on a thread of this process. Two things are
measured, each on both sides in the same run, one after the other, `--rounds` times; the
summary gives each round's ratio and their median:

- sends: `--send-warmup` and then (timed) `--sends` small text messages (`--size` bytes of
  text, a subject of their own) from bob@localhost to alice@localhost, one after the other:
  - smtplib: one connection kept (EHLO once), per message an `email.message.EmailMessage`
    built (From, To, Subject, Date, Message-ID, the text) and `sendmail`; for scale, the
    same with the message's bytes built before the clock starts;
  - pmnc: `pmnc.transaction.smtp_1.send(from, to, subject, text)` on a thread with its own
    attached request, each call its own pmnc transaction (the final "." at its commit), an
    smtp resource in a cage on a thread of this process.
  Afterwards alice's Maildir is read: every message sent, each subject exactly once.
- receiving: `--messages` messages put straight into carol's Maildir (MailServers.deliver),
  then taken, parsed and deleted:
  - poplib: connect, USER/PASS, STAT; per message RETR, `email.message_from_bytes`, DELE;
    QUIT;
  - pmnc: a cage on a thread of this process, started after the mailbox is loaded, whose one
    interface is protocol "pop3" (`interval` as given) with a handler that only counts its calls.
  The clock (and the CPU meters) run from the `--warmup`-th message parsed (poplib) or
  handed to the handler (pmnc) until the mailbox is empty (poplib: QUIT answered; pmnc: the
  last handler call, then the Maildir listed every 2 ms until it is empty).
  Afterwards the mailbox must be empty and every message handled exactly once.

CPU per message: this process's (all its threads, user + system) and the server's (the SMTP
child; Dovecot's processes, from /proc) in the timed window. `--cpus` pins this process and the
servers to one CPU (`same`) or to two (`apart`): on a small VM a ping-pong with the server is up
to three times faster when both sides share a CPU, and left to the kernel it is one or the other
from one run to the next. `--concurrency` is the pop3 interface's (messages of a poll handled
at once). Every process started is stopped at the end, whatever happens. See bench/README.md.
"""

from __future__ import annotations

import argparse
import email
import importlib.util
import os
import poplib
import pwd
import select
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import formatdate, make_msgid
from pathlib import Path
from types import FrameType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "lib"))
sys.path.append(str(ROOT / "tests"))  # mail_peer.py: the servers as the tests run them

from http_hello import pmnc_version, read_text  # noqa: E402
from inprocess import InProcessCage  # noqa: E402
from mail_peer import DOVECOT, PASSWORD, MaildirHandler, MailServers, _authenticator  # noqa: E402
from pmnc.request import Request, attached  # noqa: E402

TARGET = 0.8  # pmnc / the standard library, both for sends and for receiving
THREAD_COUNT = 10  # the cage's thread_count, as shipped
FROM_ADDR, TO_ADDR = "bob@localhost", "alice@localhost"
SENT_BOX, RECEIVED_BOX = "alice", "carol"  # where sends land; what is received from
HOOK = "pmnc_bench_mail_hook"  # the module (in sys.modules) the handler reports its calls to

HANDLER = f'''# bench/mail.py: the trivial handler of the receiving cage: it only says it was called.

import sys

__all__ = ["process_request"]

_hit = sys.modules["{HOOK}"].hit


def process_request(request: dict, response: dict) -> None:
    _hit(request.get("message_id"))


# EOF
'''


# --- the SMTP server in a child process ------------------------------------------------------------------


def serve_smtp(port: int, mail_root: str, key_cert_file: str) -> int:
    """The child: aiosmtpd with MailServers' handler and settings (STARTTLS offered, AUTH) until stdin ends."""
    import ssl

    from aiosmtpd.controller import Controller
    user = pwd.getpwnam("mail")
    handler = MaildirHandler(Path(mail_root), user.pw_uid, user.pw_gid)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(key_cert_file)
    controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=False,
                            auth_require_tls=False, ready_timeout=10.0, authenticator=_authenticator,
                            auth_exclude_mechanism=["CRAM-MD5"])
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.stdin.close())
    controller.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()
    except (ValueError, OSError):
        pass
    controller.stop()
    return 0


class SmtpChild:
    """aiosmtpd in a child process on MailServers' SMTP port (its own server stopped first)."""

    def __init__(self, mail: MailServers) -> None:
        mail.stop_smtp()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-smtp", str(mail.smtp_port), str(mail.mail),
             str(mail.key_cert_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30.0)
        line = self.process.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"the SMTP child did not start (it said {line!r})")

    def stop(self) -> str:
        if self.process.poll() is not None:
            return ""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(15.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(15.0)
            return "aiosmtpd killed"
        return "aiosmtpd stopped"


# --- CPU of other processes -----------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return read_text(Path(f"/proc/{pid}/stat")).rpartition(")")[2].split()


def tree_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of a process, its live descendants and its reaped children, from /proc."""
    ticks = 0
    for i, current in enumerate(descendants(pid)):
        fields = _stat(current)
        if len(fields) > 14:
            ticks += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if i == 0 else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def pin(mail: MailServers, smtp: SmtpChild | None, how: str) -> None:
    """This process's threads (those started later inherit it) on CPU 0; the servers' processes
    (Dovecot's later children inherit it) on CPU 0 too, or on CPU 1."""
    servers = {0} if how == "same" else {1}
    for pid in [*descendants(mail.dovecot.pid if mail.dovecot is not None else None),
                *descendants(smtp.process.pid if smtp is not None else None)]:
        os.sched_setaffinity(pid, servers)
    for task in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(task), {0})


def descendants(pid: int | None) -> list[int]:
    """A process and every process under it, from /proc."""
    if pid is None:
        return []
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if len(fields) > 2:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


# --- measuring -----------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    count: int = 0  # messages in the timed window
    seconds: float = 0.0
    client_cpu: float = 0.0  # CPU seconds of this process in the window (all its threads)
    server_cpu: float | None = None  # the SMTP child's or Dovecot's, None when not measurable apart
    done: int = 0  # sends: messages sent in all; receiving: messages handled
    expected: int = 0
    left: int | None = None  # sends: messages found delivered; receiving: left in the mailbox
    received: bool = False  # a receiving run (else sends)
    errors: int = 0
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def per_msg_us(self, seconds: float | None) -> float:
        return seconds * 1e6 / self.count if self.count and seconds is not None else float("nan")

    def error(self, text: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or text

    @property
    def problems(self) -> list[str]:
        found = []
        if self.errors:
            found.append(f"{self.errors} error(s), the first: {self.first_error}")
        if self.done != self.expected:
            found.append(f"{self.done} of {self.expected} messages done")
        if self.received and self.left:
            found.append(f"{self.left} message(s) left in the mailbox")
        if not self.received and self.left != self.done:
            found.append(f"{self.left} message(s) delivered, {self.done} sent")
        return found


class Meters:
    """The clock and the CPU meters, read at the start and the end of a timed window."""

    def __init__(self, server_pid: Callable[[], int | None]) -> None:
        self.server_pid = server_pid
        self.start: tuple[float, float, float | None] | None = None
        self.end: tuple[float, float, float | None] | None = None

    def read(self) -> tuple[float, float, float | None]:
        pid = self.server_pid()
        return time.monotonic(), time.process_time(), tree_cpu(pid) if pid is not None else None

    def settle(self, run: Run, count: int) -> None:
        if self.start is None or self.end is None:
            return
        run.count = count
        run.seconds = self.end[0] - self.start[0]
        run.client_cpu = self.end[1] - self.start[1]
        if self.start[2] is not None and self.end[2] is not None:
            run.server_cpu = self.end[2] - self.start[2]


class Hook:
    """What the receiving cage's handler reports to (a module in sys.modules): its calls, their ids."""

    def __init__(self, meters: Meters, warmup: int, total: int) -> None:
        self.meters, self.warmup, self.total = meters, warmup, total
        self.count = 0
        self.ids: set[Any] = set()
        self.duplicates = 0
        self.all_handled = threading.Event()
        self._lock = threading.Lock()
        self.module = types.ModuleType(HOOK)
        self.module.hit = self.hit  # type: ignore[attr-defined]

    def hit(self, message_id: Any) -> None:
        with self._lock:
            self.count += 1
            count = self.count
            if message_id in self.ids:
                self.duplicates += 1
            self.ids.add(message_id)
        if count == self.warmup:
            self.meters.start = self.meters.read()
        if count == self.total:
            self.all_handled.set()

    def __enter__(self) -> Hook:
        sys.modules[HOOK] = self.module
        return self

    def __exit__(self, *exc: object) -> None:
        sys.modules.pop(HOOK, None)


def left_in(box: Path) -> int:
    """Messages in a Maildir (new and seen): two directory listings, cheap enough to poll."""
    return len(os.listdir(box / "new")) + len(os.listdir(box / "cur"))


def protocol_missing(name: str) -> str:
    """Why pmnc's side cannot run ('' when it can): its protocol module is not in this version."""
    if importlib.util.find_spec(f"pmnc.protocols.{name}") is None:
        return f"pmnc has no protocol {name!r} in this version (lib/pmnc/protocols/{name}.py)"
    return ""


class Bench:
    def __init__(self, args: argparse.Namespace, base: Path, mail: MailServers, smtp: SmtpChild | None) -> None:
        self.args, self.base, self.mail, self.smtp = args, base, mail, smtp
        self.text = ("The quick brown fox jumps over the lazy dog. " * (args.size // 45 + 1))[:args.size]
        self.cages: list[InProcessCage] = []
        self.log_problems: list[str] = []
        self.sequence = 0

    def cage(self, what: str, interfaces: dict[str, dict[str, Any]], resources: dict[str, dict[str, Any]],
             files: dict[str, str]) -> InProcessCage:
        cage = InProcessCage(self.base / f"{what}-{len(self.cages)}", THREAD_COUNT, resources,
                             interfaces=interfaces, files=files, request_timeout=60.0)
        self.cages.append(cage)
        return cage

    def timeout(self, messages: int) -> float:
        return 60.0 + messages / 20

    def smtp_pid(self) -> int | None:
        return self.smtp.process.pid if self.smtp is not None else None

    def dovecot_pid(self) -> int | None:
        return self.mail.dovecot.pid if self.mail.dovecot is not None else None

    def subjects(self, what: str, count: int) -> list[str]:
        """Subjects unique in the run: the check afterwards finds each message once."""
        self.sequence += 1
        return [f"bench {what} {self.sequence}.{i}" for i in range(count)]

    # --- sends ---

    def build(self, subject: str) -> bytes:
        """The peer's message, as an application built on smtplib would build it."""
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = FROM_ADDR, TO_ADDR, subject
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain="localhost")
        message.set_content(self.text)
        return message.as_bytes()

    def timed_sends(self, run: Run, subjects: list[str], step: Callable[[str], None]) -> None:
        """Warm-up sends, then the timed ones, one after the other; errors counted, not raised."""
        warm, timed = subjects[:self.args.send_warmup], subjects[self.args.send_warmup:]
        meters = Meters(self.smtp_pid)
        sent = timed_sent = 0
        for i, subject in enumerate(warm + timed):
            if i == len(warm):
                meters.start = meters.read()
            try:
                step(subject)
                sent += 1
                timed_sent += i >= len(warm)
            except Exception as e:
                run.error(f"{type(e).__name__}: {e}")
                if run.errors >= 10:
                    break
        meters.end = meters.read()
        meters.settle(run, timed_sent)
        run.done, run.expected = sent, len(subjects)

    def send_peer(self, prebuilt: bool) -> Run:
        run = Run("smtplib, bytes built beforehand" if prebuilt else "smtplib, EmailMessage per send")
        subjects = self.subjects("smtplib", self.args.send_warmup + self.args.sends)
        messages = {s: self.build(s) for s in subjects} if prebuilt else {}
        client = smtplib.SMTP("127.0.0.1", self.mail.smtp_port, local_hostname="localhost", timeout=30.0)
        try:
            client.ehlo()

            def step(subject: str) -> None:
                client.sendmail(FROM_ADDR, [TO_ADDR], messages[subject] if prebuilt else self.build(subject))
            self.timed_sends(run, subjects, step)
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
        self.check_delivered(run, subjects)
        return run

    def send_pmnc(self, cage: InProcessCage) -> Run:
        run = Run("pmnc smtp_1.send, a transaction each")
        subjects = self.subjects("pmnc", self.args.send_warmup + self.args.sends)
        transaction, text = cage.transaction, self.text
        with attached(Request(timeout=self.timeout(len(subjects)) + 60.0, interface="bench", protocol="bench")):
            self.timed_sends(run, subjects, lambda subject: transaction.smtp_1.send(FROM_ADDR, TO_ADDR, subject, text))
        self.check_delivered(run, subjects)
        return run

    def check_delivered(self, run: Run, subjects: list[str]) -> None:
        """Every message sent in alice's Maildir, each subject once (aiosmtpd writes it before its 250)."""
        found: dict[str, int] = {}
        box = self.mail.mail / SENT_BOX
        parser = BytesHeaderParser()
        for path in [*(box / "new").iterdir(), *(box / "cur").iterdir()]:
            with open(path, "rb") as f:
                raw = parser.parse(f)["Subject"] or ""
            subject = str(make_header(decode_header(raw)))
            found[subject] = found.get(subject, 0) + 1
        run.left = sum(found.values())
        expected = set(subjects)
        missing = [s for s in subjects if s not in found]
        twice = [s for s, n in found.items() if n > 1 and s in expected]
        strangers = [s for s in found if s not in expected]
        if run.done == run.expected and missing:
            run.error(f"{len(missing)} message(s) sent but not delivered, e.g. {missing[0]!r}")
        if twice:
            run.error(f"{len(twice)} message(s) delivered more than once, e.g. {twice[0]!r}")
        if strangers:
            run.error(f"{len(strangers)} message(s) not sent in this run delivered, e.g. {strangers[0]!r}")
        self.mail.empty(SENT_BOX)

    # --- receiving ---

    def load(self, what: str) -> list[str]:
        self.mail.empty(RECEIVED_BOX)
        subjects = self.subjects(what, self.args.messages)
        for subject in subjects:
            self.mail.deliver(RECEIVED_BOX, self.build(subject))
        return subjects

    def receive_peer(self) -> Run:
        run = Run("poplib, RETR + parse + DELE", received=True)
        self.load("poplib")
        meters = Meters(self.dovecot_pid)
        handled = 0
        try:
            pop = poplib.POP3("127.0.0.1", self.mail.pop3_port, timeout=30.0)
            try:
                pop.user(RECEIVED_BOX)
                pop.pass_(PASSWORD)
                count, _ = pop.stat()
                for number in range(1, count + 1):
                    _, lines, _ = pop.retr(number)
                    email.message_from_bytes(b"\r\n".join(lines))
                    handled += 1
                    if handled == self.args.warmup:
                        meters.start = meters.read()
                    pop.dele(number)
                pop.quit()
            finally:
                pop.close()
        except (poplib.error_proto, OSError) as e:
            run.error(f"{type(e).__name__}: {e}")
        meters.end = meters.read()
        meters.settle(run, handled - self.args.warmup)
        run.done, run.expected = handled, self.args.messages
        run.left = self.mail.count(RECEIVED_BOX)
        return run

    def receive_pmnc(self) -> Run:
        run = Run("pmnc pop3 interface", received=True)
        self.load("pmnc")
        box = self.mail.mail / RECEIVED_BOX
        meters = Meters(self.dovecot_pid)
        interface = self.mail.pop3_config(RECEIVED_BOX, interval=self.args.interval)
        if self.args.concurrency != 1:  # else as configured by default
            interface["concurrency"] = self.args.concurrency
        cage = self.cage("receive", {"pop3_1": interface}, {}, {"interface_pop3_1.py": HANDLER})
        with Hook(meters, self.args.warmup, self.args.messages) as hook:
            cage.start()
            try:
                if not hook.all_handled.wait(self.timeout(self.args.messages)):
                    run.error(f"{hook.count} of {self.args.messages} handled within "
                              f"{self.timeout(self.args.messages):.0f}s")
                else:
                    deadline = time.monotonic() + 30.0
                    while left_in(box) and time.monotonic() < deadline:
                        time.sleep(0.002)
                meters.end = meters.read()
            finally:
                cage.stop()
        meters.settle(run, self.args.messages - self.args.warmup)
        if hook.duplicates:
            run.error(f"{hook.duplicates} message(s) handled more than once")
        self.log_problems += cage.problems()
        run.done, run.expected = len(hook.ids), self.args.messages
        run.left = self.mail.count(RECEIVED_BOX)
        self.mail.empty(RECEIVED_BOX)
        return run


# --- the run -------------------------------------------------------------------------------------------


def us(value: float) -> str:
    return "-" if value != value else f"{value:.0f}us"  # NaN: not measured


def row(run: Run) -> str:
    left = "-" if run.left is None else str(run.left)
    return (f"{run.name:<38}{run.rate:>8.0f}{run.done:>8}{left:>8}{run.errors:>7}"
            f"{us(run.per_msg_us(run.client_cpu)):>12}{us(run.per_msg_us(run.server_cpu)):>12}"
            f"{run.client_cpu / run.seconds * 100 if run.seconds else 0:>8.0f}%")


def header(title: str, what: str, where: str) -> str:
    return f"{title:<38}{'msg/s':>8}{what:>8}{where:>8}{'errors':>7}{'CPU/msg':>12}{'server/msg':>12}{'CPU':>9}"


def ratio(pmnc: Run | None, peer: Run) -> float:
    return pmnc.rate / peer.rate if pmnc is not None and peer.rate else float("nan")


def verdict(value: float) -> str:
    return "met" if value >= TARGET else "NOT met"


def median_line(what: str, pmnc: list[Run | None], peer: list[Run], scale: list[Run] | None = None) \
        -> tuple[str, float]:
    ratios = [ratio(p, q) for p, q in zip(pmnc, peer, strict=True)]
    rounds = ", ".join(f"{x:.2f}" for x in ratios)
    median = statistics.median(ratios) if all(x == x for x in ratios) else float("nan")
    runs = [p for p in pmnc if p is not None]
    pmnc_rate = f"{statistics.median(p.rate for p in runs):.0f}/s" if runs else "not run"
    pmnc_cpu = f"{statistics.median(p.per_msg_us(p.client_cpu) for p in runs):.0f}" if runs else "-"
    peer_rate = statistics.median(q.rate for q in peer)
    peer_cpu = statistics.median(q.per_msg_us(q.client_cpu) for q in peer)
    extra = f" ({statistics.median(s.rate for s in scale):.0f}/s with the bytes built beforehand)" if scale else ""
    return (f"{what}: pmnc {pmnc_rate}, {peer[0].name.split(',')[0]} {peer_rate:.0f}/s{extra}; CPU per message "
            f"{pmnc_cpu} against {peer_cpu:.0f} us; ratio per round {rounds}, median {median:.2f} "
            f"(target >= {TARGET}: {verdict(median)})"), median


def bench(args: argparse.Namespace, mail: MailServers, b: Bench) -> int:
    where = "in this process" if b.smtp is None else f"a child process, pid {b.smtp.process.pid}"
    print(f"mail: {args.rounds} round(s); {args.sends} sends after {args.send_warmup}, {args.messages} messages "
          f"received (rate after the first {args.warmup}), {args.size} bytes of text each; Python "
          f"{sys.version.split()[0]}; {os.cpu_count()} CPUs shared by the servers and this process")
    print(f"Dovecot POP3 on 127.0.0.1:{mail.pop3_port}, aiosmtpd on 127.0.0.1:{mail.smtp_port} ({where}), "
          f"Maildirs in {mail.mail}; {pmnc_version()}")
    missing = {name: protocol_missing(name) for name in ("smtp", "pop3")}
    for why in missing.values():
        if why:
            print(f"mail: {why}: its side is not measured")

    sent: list[tuple[Run, Run, Run | None]] = []
    received: list[tuple[Run, Run | None]] = []
    for r in range(args.rounds):
        if args.only != "receiving":
            print(f"round {r + 1}: sends ...", flush=True)
            sent.append(send_round(b, mail, missing["smtp"]))
        if args.only != "sends":
            print(f"round {r + 1}: receiving ...", flush=True)
            received.append((b.receive_peer(), b.receive_pmnc() if not missing["pop3"] else None))

    print()
    for title, what, where, rounds in (("sends", "sent", "found", sent), ("receiving", "handled", "left", received)):
        if rounds:
            print(header(title, what, where))
        for r, runs in enumerate(rounds):
            for run in runs:
                if run is not None:
                    print(row(run) + f"  round {r + 1}")
    print()
    failed = any(missing.values())
    for runs in [*sent, *received]:
        for run in runs:
            if run is None:
                continue
            for problem in run.problems:
                failed = True
                print(f"{run.name}: {problem}")
    summary = []
    if sent:
        line, median = median_line("sends", [s[2] for s in sent], [s[0] for s in sent], [s[1] for s in sent])
        prebuilt = statistics.median(ratio(s[2], s[1]) for s in sent)
        print(line)
        print(f"sends against smtplib with the bytes built beforehand: median ratio {prebuilt:.2f}")
        summary.append(f"send {median:.2f}")
    if received:
        line, median = median_line("receiving", [x[1] for x in received], [x[0] for x in received])
        print(line)
        summary.append(f"receive {median:.2f}")
    for line in b.log_problems[:5]:
        print(f"cage log: {line}")
    print(f"mail: median ratios pmnc/stdlib: {', '.join(summary)} (target >= {TARGET})")
    if failed:
        print("mail: NOT CLEAN: see above")
    return 1 if failed else 0


def send_round(b: Bench, mail: MailServers, missing: str) -> tuple[Run, Run, Run | None]:
    """smtplib building each message, smtplib with the bytes built beforehand, pmnc (a cage of its own)."""
    peer, prebuilt, pmnc = b.send_peer(False), b.send_peer(True), None
    if not missing:
        sender = b.cage("send", {}, {"smtp_1": mail.smtp_config()}, {})
        sender.start()
        try:
            pmnc = b.send_pmnc(sender)
        finally:
            sender.stop()
            b.log_problems += sender.problems()
    return peer, prebuilt, pmnc


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve-smtp"] and len(argv) == 4:
        return serve_smtp(int(argv[1]), argv[2], argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sends", type=int, default=1000, help="sends measured per run (1000)")
    parser.add_argument("--send-warmup", type=int, default=50, help="sends before the clock starts (50)")
    parser.add_argument("--messages", type=int, default=2000, help="messages loaded and received per run (2000)")
    parser.add_argument("--warmup", type=int, default=50, help="messages received before the clock starts (50)")
    parser.add_argument("--size", type=int, default=100, help="characters of each message's text (100)")
    parser.add_argument("--interval", type=float, default=0.2, help="the pop3 interface's interval, seconds (0.2)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="the pop3 interface's concurrency: messages of a poll handled at once (1)")
    parser.add_argument("--rounds", type=int, default=3, help="times everything is measured; medians (3)")
    parser.add_argument("--smtp-in-process", action="store_true",
                        help="keep MailServers' aiosmtpd on a thread of this process (its CPU then counts as ours)")
    parser.add_argument("--only", choices=("sends", "receiving"), help="measure one of the two only (for profiling)")
    parser.add_argument("--cpus", choices=("same", "apart"),
                        help="pin this process and the servers to CPU 0 (same), or this process to CPU 0 and the "
                             "servers to CPU 1 (apart); by default the kernel places them")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (cage logs, Maildirs)")
    args = parser.parse_args(argv)
    if (args.messages < 2 or not 1 <= args.warmup < args.messages or args.sends < 1 or args.send_warmup < 1
            or args.size < 1 or args.rounds < 1 or args.interval <= 0 or not 1 <= args.concurrency <= THREAD_COUNT):
        parser.error("--warmup must be at least 1 and below --messages; --sends, --send-warmup, --size and "
                     f"--rounds at least 1; --interval above 0; --concurrency 1 to {THREAD_COUNT}")
    if args.cpus == "apart" and len(os.sched_getaffinity(0)) < 2:
        parser.error("--cpus apart needs two CPUs")
    if not os.path.exists(DOVECOT) or importlib.util.find_spec("aiosmtpd") is None or os.geteuid() != 0:
        print(f"mail: needs {DOVECOT} (Debian package dovecot-pop3d), aiosmtpd (./setup test) and root",
              file=sys.stderr)
        return 2

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    base = Path(tempfile.mkdtemp(prefix="pmnc-bench-"))
    mail: MailServers | None = None
    smtp: SmtpChild | None = None
    b: Bench | None = None
    try:
        mail = MailServers()
        smtp = None if args.smtp_in_process else SmtpChild(mail)
        if args.cpus:
            pin(mail, smtp, args.cpus)
        b = Bench(args, base, mail, smtp)
        return bench(args, mail, b)
    except (RuntimeError, OSError, smtplib.SMTPException, poplib.error_proto) as e:
        sys.stdout.flush()
        print(f"mail: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("mail: interrupted", file=sys.stderr)
        return 130
    finally:
        stopped = [cage.stop() for cage in (b.cages if b is not None else [])]
        stopped = [what for what in stopped if what]
        if smtp is not None:
            stopped.append(smtp.stop())
        if mail is not None:
            mail.stop_smtp()
            mail.stop_pop3()
            stopped.append("Dovecot stopped")
        stopped = [what for what in stopped if what]
        print(f"stopped: {'; '.join(stopped) or 'nothing was running'}")
        if args.keep:
            print(f"kept: {base}" + (f" {mail.folder}" if mail is not None else ""))
        else:
            shutil.rmtree(base, ignore_errors=True)
            if mail is not None:
                shutil.rmtree(mail.folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
