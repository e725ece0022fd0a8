"""Benchmark how pmnc's sample cage and a bare uvicorn serve plain requests while slowloris clients attack them.

    .venv/bin/python bench/http_slowloris.py [--attackers 300] [--clients 4] [--duration 20] [--warmup 3]
                                             [--reconnect-delay 0] [--keep]

Each server in turn (the sample cage as shipped, only moved to a free
loopback port, then `bench/uvicorn_hello.py` with uvicorn's defaults) is
attacked from 127.0.0.1 by `--attackers` slow clients, all in one process of
their own (this script with `--attack-port`): each opens a connection and
sends one byte of a request head every 2 s, never finishing it, and opens a
new connection as soon as the server closes its own (`--reconnect-delay`
seconds later). After `--warmup` seconds
in which they connect, `--clients` threads of this process make plain
`GET /` requests, each on a new connection with a 5 s timeout, back to back
for `--duration` seconds. Nothing is asserted. Every process started here is
stopped at the end whatever happens. See bench/README.md.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import math
import os
import queue
import re
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from http_hello import (
    BENCH,
    CAGE_PROCESS,
    HOST,
    PmncCage,
    Uvicorn,
    end_process,
    pmnc_version,
    run_pair,
    wait_until,
)
from xmlrpc_echo import cpu_seconds

SEND_INTERVAL = 2.0  # seconds between an attacker's bytes
CLIENT_TIMEOUT = 5.0  # seconds a normal request may take, connect included
CONNECT_TIMEOUT = 5.0  # seconds an attacker waits for its connection to be accepted
RETRY_DELAY = 0.1  # seconds before an attacker whose connect failed tries again (not after a close)
MAX_REQUESTS_PER_CLIENT = 1_000_000  # a bound on each normal client's loop, whatever the server does
ATTACKER_SLACK = 60.0  # seconds the attacker process lives beyond warm-up + duration, should nobody stop it
# What the attackers trickle: a request line and the start of a header that never ends.
HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: http_slowloris\r\nX-Slowloris: "
FILLER = b"a"


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft descriptor limit to its hard limit (children inherit it); (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- the attackers: one process, one selector, N sockets ---------------------------------------


class Slow:
    """One attacker: a connection trickling a head, reopened whenever it is closed."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.state = "idle"  # idle (retry at retry_at) | connecting | open
        self.retry_at = 0.0
        self.since = 0.0  # connecting: when it began; open: when it was accepted
        self.next_send = 0.0
        self.sent = 0


class Attack:
    """The attackers' loop. Counters are since the last `mark`."""

    def __init__(self, port: int, count: int, interval: float, reconnect_delay: float) -> None:
        self.port, self.interval, self.reconnect_delay = port, interval, reconnect_delay
        self.selector = selectors.DefaultSelector()
        self.slows = [Slow(i) for i in range(count)]
        self.counts: Counter[str] = Counter()

    def _close(self, slow: Slow, why: str, now: float, retry: float = 0.0) -> None:
        self.counts[why] += 1
        if slow.sock is not None:
            try:
                self.selector.unregister(slow.sock)
            except (KeyError, ValueError):
                pass
            slow.sock.close()
            slow.sock = None
        slow.state, slow.retry_at = "idle", now + retry

    def _connect(self, slow: Slow, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex((HOST, self.port))
        slow.sock, slow.since, slow.sent = sock, now, 0
        if code in (0, errno.EINPROGRESS):
            slow.state = "connecting"
            self.selector.register(sock, selectors.EVENT_WRITE, slow)
        else:
            self._close(slow, f"connect failed ({errno.errorcode.get(code, code)})", now, RETRY_DELAY)

    def _send(self, slow: Slow, now: float) -> None:
        assert slow.sock is not None
        byte = HEAD[slow.sent:slow.sent + 1] or FILLER
        try:
            slow.sock.send(byte)
        except BlockingIOError:
            pass  # never with one byte every 2 s; try again next time
        except OSError:
            self._close(slow, "reset", now, self.reconnect_delay)
            return
        else:
            slow.sent += 1
            self.counts["bytes sent"] += 1
        slow.next_send = now + self.interval

    def _event(self, slow: Slow, now: float) -> None:
        assert slow.sock is not None
        if slow.state == "connecting":
            code = slow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._close(slow, f"connect failed ({errno.errorcode.get(code, code)})", now, RETRY_DELAY)
                return
            slow.state, slow.since = "open", now
            self.counts["connections made"] += 1
            self.selector.modify(slow.sock, selectors.EVENT_READ, slow)
            self._send(slow, now)
            return
        try:
            data = slow.sock.recv(4096)
        except OSError:
            self._close(slow, "reset", now, self.reconnect_delay)
            return
        if not data:
            self._close(slow, "closed without an answer", now, self.reconnect_delay)
            return
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        status = parts[1] if len(parts) > 1 and line.startswith("HTTP/") else "?"
        self._close(slow, f"answered {status}", now, self.reconnect_delay)  # an answer ends it (pmnc's do)

    def open_ages(self, now: float) -> list[float]:
        return [now - s.since for s in self.slows if s.state == "open"]

    def snapshot(self, now: float) -> dict[str, Any]:
        ages = sorted(self.open_ages(now))
        return {"open": len(ages), "connecting": sum(s.state == "connecting" for s in self.slows),
                "held": sum(age >= self.interval for age in ages),
                "oldest_open_s": round(ages[-1], 2) if ages else None,
                "median_open_s": round(ages[len(ages) // 2], 2) if ages else None,
                "counts": dict(self.counts)}

    def run(self, lifetime: float, commands: IO[str]) -> int:
        began = time.monotonic()
        end = began + lifetime
        os.set_blocking(commands.fileno(), False)
        self.selector.register(commands, selectors.EVENT_READ, None)
        pending = b""
        ready_said = False
        while (now := time.monotonic()) < end:
            for slow in self.slows:
                if slow.state == "idle" and now >= slow.retry_at:
                    self._connect(slow, now)
                elif slow.state == "connecting" and now - slow.since > CONNECT_TIMEOUT:
                    self._close(slow, "connect timed out", now)
                elif slow.state == "open" and now >= slow.next_send:
                    self._send(slow, now)
            if not ready_said and (all(s.state != "connecting" for s in self.slows) or now - began > 5.0):
                ready_said = True
                reply({"ready": self.snapshot(now)})
            for key, _ in self.selector.select(0.05):
                if key.data is not None:
                    self._event(key.data, time.monotonic())
                    continue
                try:
                    chunk = os.read(commands.fileno(), 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    return 0  # the benchmark has gone: so do we
                pending += chunk
                while b"\n" in pending:
                    command, pending = pending.split(b"\n", 1)
                    if command.strip() == b"mark":
                        self.counts.clear()
                        reply({"marked": self.snapshot(time.monotonic())})
                    elif command.strip() == b"stop":
                        reply({"stopped": self.snapshot(time.monotonic())})
                        return 0
        return 0

    def close_all(self) -> None:
        for slow in self.slows:
            if slow.sock is not None:
                slow.sock.close()


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def attack_main(port: int, count: int, lifetime: float, reconnect_delay: float) -> int:
    raise_fd_limit()
    attack = Attack(port, count, SEND_INTERVAL, reconnect_delay)
    try:
        return attack.run(lifetime, sys.stdin)
    finally:
        attack.close_all()


class Attackers:
    """The attacker process, from the benchmark's side: JSON lines out, commands in."""

    def __init__(self, port: int, count: int, lifetime: float, reconnect_delay: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "http_slowloris.py"), "--attack-port", str(port),
             "--attackers", str(count), "--lifetime", str(lifetime), "--reconnect-delay", str(reconnect_delay)],
            cwd=BENCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name="attackers-out", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, key: str, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(end - time.monotonic(), 0.01))
            except queue.Empty:
                raise RuntimeError(f"attackers: no '{key}' within {timeout:.0f}s") from None
            if line is None:
                raise RuntimeError(f"attackers exited ({self.process.poll()}) before '{key}': {self._stderr()}")
            message = json.loads(line)
            if key in message:
                return dict(message[key])

    def _stderr(self) -> str:
        try:
            assert self.process.stderr is not None
            return self.process.stderr.read()[-2000:] if self.process.poll() is not None else ""
        except (OSError, ValueError):
            return ""

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def stop(self) -> str:
        if self.process.poll() is None:
            try:
                self.send("stop")
            except (OSError, ValueError):
                pass
        try:
            return end_process(self.process, "attackers", 10.0, lambda: None)
        finally:
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass


# --- the normal clients -----------------------------------------------------------------------------


@dataclass
class Tally:
    attempted: int = 0
    ok: int = 0
    refused_reset: int = 0
    timeout: int = 0
    non_200: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, of the 200s

    def add(self, other: Tally) -> None:
        self.attempted += other.attempted
        self.ok += other.ok
        self.refused_reset += other.refused_reset
        self.timeout += other.timeout
        self.non_200 += other.non_200
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)
        self.latencies.extend(other.latencies)

    def served(self) -> float:
        return 100.0 * self.ok / self.attempted if self.attempted else float("nan")

    def p(self, q: float) -> float | None:
        """The q-th percentile of the answered requests' latency (nearest rank), in ms."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return 1000.0 * ordered[max(math.ceil(q / 100.0 * len(ordered)) - 1, 0)]


def one_request(port: int, tally: Tally) -> None:
    """GET / on a new connection, timed from before the connect to the end of the body."""
    tally.attempted += 1
    began = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=CLIENT_TIMEOUT)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
    except TimeoutError:
        tally.timeout += 1
        return
    except (OSError, http.client.HTTPException) as e:
        tally.refused_reset += 1
        tally.errors[type(e).__name__] += 1
        return
    finally:
        connection.close()
    if response.status == 200:
        tally.ok += 1
        tally.latencies.append(time.perf_counter() - began)
    else:
        tally.non_200 += 1
        tally.statuses[response.status] += 1


def normal_clients(port: int, threads: int, duration: float) -> Tally:
    end = time.monotonic() + duration
    tallies = [Tally() for _ in range(threads)]

    def loop(tally: Tally) -> None:
        while time.monotonic() < end and tally.attempted < MAX_REQUESTS_PER_CLIENT:
            one_request(port, tally)

    workers = [threading.Thread(target=loop, args=(t,), name=f"normal-{i}", daemon=True)
               for i, t in enumerate(tallies)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(duration + CLIENT_TIMEOUT + 10.0)  # a request started at the end may last its timeout
    total = Tally()
    for tally in tallies:
        total.add(tally)
    return total


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    normal: Tally
    attackers: dict[str, Any]  # the attackers' snapshot at the end of the measured run
    seconds: float
    server_cpu: float | None  # share of one CPU during the measured run
    attackers_cpu: float | None


def under_attack(name: str, port: int, server_pid: int, args: argparse.Namespace) -> Outcome:
    print(f"{name}: {args.attackers} attackers connecting ({args.warmup:g}s) ...", flush=True)
    attackers = Attackers(port, args.attackers, args.warmup + args.duration + ATTACKER_SLACK, args.reconnect_delay)
    try:
        ready = attackers.expect("ready", 30.0)
        print(f"{name}: attackers ready, {ready['open']} open, {ready['connecting']} still connecting", flush=True)
        time.sleep(args.warmup)
        attackers.send("mark")
        marked = attackers.expect("marked", 10.0)
        print(f"{name}: {marked['open']} attackers open ({marked['held']} for {SEND_INTERVAL:g}s or more); "
              f"{args.clients} normal clients for {args.duration:g}s ...", flush=True)
        cpu_before = cpu_seconds(server_pid), cpu_seconds(attackers.process.pid)
        began = time.monotonic()
        normal = normal_clients(port, args.clients, args.duration)
        attackers.send("stop")
        stopped = attackers.expect("stopped", 10.0)
        seconds = time.monotonic() - began
        cpu_after = cpu_seconds(server_pid), cpu_seconds(attackers.process.pid)
    finally:
        print(f"{name}: {attackers.stop()}", flush=True)
    shares = [None if b is None or a is None else (a - b) / seconds for b, a in zip(cpu_before, cpu_after, strict=True)]
    return Outcome(name, normal, stopped, seconds, shares[0], shares[1])


def limits(pmnc: PmncCage) -> str:
    """The slowloris-related settings of the sample cage's interface, the defaults named as such."""
    config = (pmnc.cage_dir / "config_interface_http.py").read_text()

    def setting(name: str) -> str | None:
        found = re.search(rf"^\s*{name}\s*=\s*([^,#\n]+)", config, re.M)
        return found.group(1).strip() if found else None

    most = setting("max_connections")
    per_ip, header = setting("max_connections_per_ip"), setting("header_timeout")
    default_per_ip = str(max(1, int(most) // 2)) if most and most.isdigit() else "half of max_connections"
    return (f"max_connections={most or '100 (default)'}, "
            f"max_connections_per_ip={per_ip or default_per_ip + ' (default)'}, "
            f"header_timeout={header or '5.0 (default)'}")


def cage_pid(pmnc: PmncCage) -> int:
    """The cage process (the supervisor's child, which serves), from the supervisor's log line."""
    found = wait_until(lambda: CAGE_PROCESS.findall(pmnc.log_text()), 10.0, "pmnc: the cage process's pid")
    return int(found[-1])


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}ms"


def _share(value: float | None) -> str:
    return "?" if value is None else f"{100.0 * value:.0f}%"


def print_table(outcomes: list[Outcome], attackers: int) -> None:
    print(f"{'':<9}{'attempted':>10}{'200':>8}{'refus/rst':>10}{'timeout':>8}{'non-200':>8}{'p50':>9}{'p99':>9}"
          f"{'att.open':>10}{'held':>6}{'att.conns':>10}{'srv CPU':>8}{'att CPU':>8}")
    for o in outcomes:
        n, a = o.normal, o.attackers
        print(f"{o.name:<9}{n.attempted:>10}{n.ok:>8}{n.refused_reset:>10}{n.timeout:>8}{n.non_200:>8}"
              f"{_ms(n.p(50)):>9}{_ms(n.p(99)):>9}{a['open']:>6}/{attackers:<3}{a['held']:>6}"
              f"{a['counts'].get('connections made', 0):>9}{_share(o.server_cpu):>8}{_share(o.attackers_cpu):>8}")
    for o in outcomes:
        n, a = o.normal, o.attackers
        details = []
        if n.statuses:
            details.append("non-200: " + ", ".join(f"{s} x{c}" for s, c in sorted(n.statuses.items())))
        if n.errors:
            details.append("refused/reset: " + ", ".join(f"{e} x{c}" for e, c in n.errors.most_common()))
        ends = {k: v for k, v in a["counts"].items() if k not in ("connections made", "bytes sent")}
        details.append("attackers' connections ended: "
                       + (", ".join(f"{k} x{v}" for k, v in sorted(ends.items())) or "none"))
        if a["open"]:
            details.append(f"open ones {a['median_open_s']:.1f}s old (median), oldest {a['oldest_open_s']:.1f}s")
        print(f"  {o.name}: {'; '.join(details)}")


def bench(args: argparse.Namespace, pmnc: PmncCage, peer: Uvicorn) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"http_slowloris: {args.attackers} attackers from {HOST} (one byte of a head every {SEND_INTERVAL:g}s, "
          f"reconnecting when closed), {args.clients} normal clients (GET / on a new connection each, "
          f"{CLIENT_TIMEOUT:g}s timeout) for {args.duration:g}s after a {args.warmup:g}s warm-up; "
          f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs shared by servers and clients; "
          f"descriptors {soft}/{hard}")
    pmnc.start()
    print(f"{pmnc_version()}: sample cage on http://{HOST}:{pmnc.port}/ (tree {pmnc.root}), {limits(pmnc)}")
    on_pmnc = under_attack("pmnc", pmnc.port, cage_pid(pmnc), args)
    peer.start()
    print(peer.banner)
    assert peer.process is not None
    on_peer = under_attack("uvicorn", peer.port, peer.process.pid, args)

    print()
    print_table([on_pmnc, on_peer], args.attackers)
    problems = [line for line in pmnc.log_text().splitlines() if " ERR " in line or " WRN " in line]
    if problems:
        print(f"cage log: {len(problems)} error/warning line(s), the first ones:")
        for line in problems[:5]:
            print(f"  {line}")
    a, b = on_pmnc.normal.served(), on_peer.normal.served()
    ratio = a / b if b else float("nan")
    print(f"http_slowloris: pmnc served {a:.1f}% of normal requests under {args.attackers} attackers "
          f"(p99 {_ms(on_pmnc.normal.p(99))}), uvicorn {b:.1f}% (p99 {_ms(on_peer.normal.p(99))}), "
          f"ratio {ratio:.2f}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--attackers", type=int, default=300, help="slow clients (300)")
    parser.add_argument("--clients", type=int, default=4, help="threads of normal clients (4)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of normal requests per server (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds for the attackers to connect (3)")
    parser.add_argument("--reconnect-delay", type=float, default=0.0,
                        help="seconds an attacker waits after its connection is closed before it reconnects (0)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree and logs, print where")
    parser.add_argument("--attack-port", type=int, default=0, help=argparse.SUPPRESS)  # the attacker process
    parser.add_argument("--lifetime", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (1 <= args.attackers <= 20000 and 1 <= args.clients <= 64 and 1 <= args.duration <= 3600
            and 0 <= args.warmup <= 600 and 0 <= args.reconnect_delay <= 60):
        parser.error("--attackers 1..20000, --clients 1..64, --duration 1..3600 s, --warmup 0..600 s, "
                     "--reconnect-delay 0..60 s")
    if args.attack_port:
        return attack_main(args.attack_port, args.attackers, args.lifetime, args.reconnect_delay)
    raise_fd_limit()  # before the servers start: they inherit it too
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.attackers + 64:
        print(f"http_slowloris: {args.attackers} attackers need more descriptors than the limit {soft}",
              file=sys.stderr)
        return 2
    return run_pair("http_slowloris", args.keep, PmncCage, Uvicorn, lambda pmnc, peer: bench(args, pmnc, peer))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
