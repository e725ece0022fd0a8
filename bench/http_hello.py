"""Benchmark pmnc's sample cage against a bare uvicorn hello-world with wrk, then pmnc during hot reloads.

    .venv/bin/python bench/http_hello.py [--duration 10] [--warmup 2] [--connections 50] [--no-reloads]
                                         [--pin CPU]

Phase 1: a temporary install tree runs the sample cage (`startup.py sample`,
its HTTP interface moved to a free loopback port) and `bench/uvicorn_hello.py`
runs on another; each gets a warm-up and then `wrk -t2 -c50 -d<N>s --latency`,
one after the other. Phase 2: wrk against pmnc again while a thread rewrites
`cages/sample/interface_http.py` 10 times, evenly spaced; every response
should still succeed and the cage log should show the 10 reloads. The
summary line gives pmnc/uvicorn against issue 20's target (>= 0.8).
--connections N runs wrk with N connections (on min(2, N) threads) instead
of 50 (above 50 the cage's max_connections_per_ip is raised to its
max_connections: wrk is one address); --no-reloads leaves phase 2 out
(bench/scaling.py uses both); --pin CPU keeps each server on that one CPU
(pmnc by `cpu_affinity` in its config_interfaces.py, uvicorn by this script;
wrk goes where the system puts it); without it the sample cage places itself
as shipped (`cpu_affinity="auto"`) and uvicorn goes where the system puts it.
Both servers are stopped at the end whatever happens. See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
HOST = "127.0.0.1"
WRK_THREADS, WRK_CONNECTIONS = 2, 50
SAMPLE_SHARE = 50  # the sample cage's max_connections_per_ip: by default half of its max_connections, 100
RELOADS = 10
TARGET = 0.8  # pmnc / uvicorn, requests/s (issue 20)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

T = TypeVar("T")

# The two versions of the handler that phase 2 alternates between; each is a complete module.
HANDLER = '''# The sample cage's web page, rewritten by bench/http_hello.py (revision {revision}).

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    response["content"] = "{greeting}"
    response["headers"]["content-type"] = "text/plain"


# EOF
'''
GREETINGS = ("Hello again, world !", "Hello, world !")


# --- small helpers -------------------------------------------------------------------------


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; raise at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def http_get(port: int, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """One GET / on a new connection: (status, body), or None if it fails."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def wait_answers(port: int, what: str) -> bytes:
    """Wait until GET / on `port` answers 200; its body."""
    def ok() -> bytes | None:
        answer = http_get(port)
        if answer is None or answer[0] != 200:
            return None
        return answer[1] or b"(empty)"
    return wait_until(ok, START_TIMEOUT, f"{what} answering 200 on port {port}")


def write_atomically(path: Path, text: str) -> None:
    """Write the way an editor saves: a new file renamed into place."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def end_process(process: subprocess.Popen[bytes], what: str, timeout: float, kill_also: Callable[[], None]) -> str:
    """Wait for a process we asked to stop; kill it (and `kill_also`) at the deadline."""
    try:
        code = process.wait(timeout)
        if code < 0:
            return f"{what} ended by {signal.Signals(-code).name}"
        return f"{what} exited with code {code}"
    except subprocess.TimeoutExpired:
        kill_also()
        process.kill()
        process.wait(10)
        return f"{what} did not stop within {timeout:.0f}s and was killed"


CAGE_PROCESS = re.compile(r"the cage process has started, pid (\d+)")  # a supervisor's log line


def kill_cage_processes(log_text: str) -> None:
    """The cage processes a cage log names (supervisors' children, started by us through them), by pid."""
    for pid in (int(p) for p in CAGE_PROCESS.findall(log_text)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- the servers -----------------------------------------------------------------------------


class PmncCage:
    """The sample cage in a temporary install tree, run as `python startup.py sample`."""

    LISTENS = re.compile(r"interface http listens on https?://[\d.]+:(\d+)/")

    def __init__(self, base: Path, whole_share: bool = False) -> None:
        self.root = base / "pmnc"
        self.whole_share = whole_share  # max_connections_per_ip = max_connections (wrk's one address takes all)
        self.cage_dir = self.root / "cages" / "sample"
        self.logs = self.cage_dir / "logs"
        self.handler = self.cage_dir / "interface_http.py"
        self.output = base / "pmnc.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def make_tree(self) -> None:
        """startup.py, lib (a symlink), cages/.shared and cages/sample, listening on port 0."""
        (self.root / "cages").mkdir(parents=True)
        shutil.copy(ROOT / "startup.py", self.root / "startup.py")
        os.symlink(ROOT / "lib", self.root / "lib")
        shutil.copytree(ROOT / "cages" / ".shared", self.root / "cages" / ".shared")
        shutil.copytree(ROOT / "cages" / "sample", self.cage_dir,
                        ignore=shutil.ignore_patterns("logs", "state", "__pycache__"))
        config = self.cage_dir / "config_interface_http.py"
        text = config.read_text()
        extra = ""
        if self.whole_share:
            most = re.search(r"max_connections\s*=\s*(\d+)", text)
            extra = f", max_connections_per_ip={most.group(1) if most else 100}"
        text, count = re.subn(r"listener_address\s*=\s*\([^)]*\)", f'listener_address=("{HOST}", 0){extra}', text)
        if count != 1:
            raise RuntimeError(f"{config}: no listener_address to rewrite")
        config.write_text(text)
        if PIN is not None:
            settings = self.cage_dir / "config_interfaces.py"
            text, count = re.subn(r"^config = dict\(\n", f"config = dict(\n    cpu_affinity=({PIN},),\n",
                                  settings.read_text(), flags=re.M)
            if count != 1:
                raise RuntimeError(f"{settings}: no config = dict( to add cpu_affinity to")
            settings.write_text(text)

    def start(self) -> None:
        self.make_tree()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen([sys.executable, str(self.root / "startup.py"), "sample"],
                                            cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        match = wait_until(self._listening, START_TIMEOUT, "pmnc: the log line 'interface http listens on'")
        self.port = int(match.group(1))
        wait_answers(self.port, "pmnc")

    def _listening(self) -> re.Match[str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"pmnc exited with code {self.process.returncode}: "
                               f"{read_text(self.output)[-2000:]}{self.log_text()[-2000:]}")
        return self.LISTENS.search(self.log_text())

    def log_text(self) -> str:
        if not self.logs.is_dir():
            return ""
        return "".join(read_text(p) for p in sorted(self.logs.glob("*.log")))

    def reloads(self) -> int:
        return len(re.findall(r"module interface_http has been reloaded", self.log_text()))

    def _kill_cage(self) -> None:
        kill_cage_processes(self.log_text())

    def stop(self) -> str:
        """SIGTERM to the supervisor, which stops the cage gracefully."""
        if self.process is None:
            return "pmnc was not started"
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return end_process(self.process, "pmnc", STOP_TIMEOUT, self._kill_cage)


class Uvicorn:
    """bench/uvicorn_hello.py: one uvicorn process with its default loop and HTTP parser."""

    BANNER = re.compile(r"uvicorn_hello: .* on https?://[\d.]+:(\d+)/, .*")

    def __init__(self, base: Path) -> None:
        self.output = base / "uvicorn.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.banner = ""

    def start(self) -> None:
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen([sys.executable, str(BENCH / "uvicorn_hello.py"), "--port", "0"],
                                            cwd=BENCH, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        if PIN is not None:
            os.sched_setaffinity(self.process.pid, {PIN})
        match = wait_until(self._listening, START_TIMEOUT, "uvicorn: its banner line")
        self.banner, self.port = match.group(0), int(match.group(1))
        wait_answers(self.port, "uvicorn")

    def _listening(self) -> re.Match[str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with code {self.process.returncode}: "
                               f"{read_text(self.output)[-2000:]}")
        return self.BANNER.search(read_text(self.output))

    def stop(self) -> str:
        if self.process is None:
            return "uvicorn was not started"
        if self.process.poll() is None:
            self.process.terminate()
        return end_process(self.process, "uvicorn", STOP_TIMEOUT, lambda: None)


# --- wrk --------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    non_2xx: int  # wrk's "Non-2xx or 3xx responses"
    socket_errors: int  # connect + read + write + timeout
    output: str

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    """The numbers this benchmark reports, from wrk's text output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in", output, re.M)
    if rps is None or total is None:
        raise RuntimeError(f"wrk output not understood:\n{output}")
    latency = {m.group(1): _ms(m.group(2), m.group(3))
               for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        p50_ms=latency.get("50"),
        p99_ms=latency.get("99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        output=output,
    )


def wrk_threads(connections: int) -> int:
    """wrk's threads for `connections`: it needs at least one connection per thread."""
    return min(WRK_THREADS, connections)


def wrk(port: int, duration: int, latency: bool = True, connections: int = WRK_CONNECTIONS) -> WrkResult:
    """`wrk -t2 -c50 -d<N>s [--latency] http://127.0.0.1:PORT/` (keep-alive, wrk's default);
    `connections` other than 50 on min(2, connections) threads."""
    command = ["wrk", f"-t{wrk_threads(connections)}", f"-c{connections}", f"-d{duration}s",
               *(["--latency"] if latency else []), f"http://{HOST}:{port}/"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60.0, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with code {done.returncode}:\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


# --- phase 2: rewriting the handler during a run ----------------------------------------------


class Rewriter(threading.Thread):
    """Rewrites the handler `count` times, evenly spaced over `duration` seconds from `start()`."""

    def __init__(self, path: Path, count: int, duration: float) -> None:
        super().__init__(name="rewriter", daemon=True)
        self.path, self.count, self.duration = path, count, duration
        self.cancelled = threading.Event()
        self.written = 0
        self.last_greeting = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        began = time.monotonic()
        try:
            for i in range(self.count):
                # writes at (i + 0.5) / count of the run: none at its very start or end
                if self.cancelled.wait(max(began + self.duration * (i + 0.5) / self.count - time.monotonic(), 0)):
                    return
                greeting = GREETINGS[i % len(GREETINGS)]
                write_atomically(self.path, HANDLER.format(revision=i + 1, greeting=greeting))
                self.written, self.last_greeting = i + 1, greeting
        except BaseException as e:
            self.error = e


# --- the run -----------------------------------------------------------------------------------


def _fmt_ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}ms"


def print_table(rows: list[tuple[str, WrkResult]]) -> None:
    print(f"{'':<26}{'req/s':>10}{'requests':>11}{'p50':>10}{'p99':>10}{'non-2xx':>9}{'sock.err':>9}")
    for name, r in rows:
        print(f"{name:<26}{r.rps:>10.0f}{r.requests:>11}{_fmt_ms(r.p50_ms):>10}{_fmt_ms(r.p99_ms):>10}"
              f"{r.non_2xx:>9}{r.socket_errors:>9}")


def print_log_problems(pmnc: PmncCage) -> None:
    problems = [line for line in pmnc.log_text().splitlines() if " ERR " in line or " WRN " in line]
    if problems:
        print(f"cage log: {len(problems)} error/warning line(s), the first ones:")
        for line in problems[:5]:
            print(f"  {line}")


def pmnc_version() -> str:
    """The commit under test, and whether lib/ differs from it (a benchmark of a work tree)."""
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""
    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "pmnc (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "lib", "startup.py", "cages")
    return f"pmnc {commit}{' + uncommitted changes in lib/, startup.py or cages/' if dirty else ''}"


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    return lines[0].split(" Copyright")[0].strip() if lines else "wrk (version unknown)"


def bench(args: argparse.Namespace, pmnc: PmncCage, peer: Uvicorn) -> int:
    print(f"http_hello: wrk -t{wrk_threads(args.connections)} -c{args.connections} -d{args.duration:g}s --latency, "
          f"keep-alive, warm-up {args.warmup:g}s each; {wrk_version()}; Python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs shared by servers and wrk")

    pmnc.start()
    print(f"{pmnc_version()}: sample cage on http://{HOST}:{pmnc.port}/ (tree {pmnc.root}){pinned()}")
    peer.start()
    print(peer.banner + pinned())

    print(f"warming up ({args.warmup:g}s each) ...", flush=True)
    wrk(pmnc.port, args.warmup, latency=False, connections=args.connections)
    wrk(peer.port, args.warmup, latency=False, connections=args.connections)

    print("phase 1: pmnc, then uvicorn ...", flush=True)
    on_pmnc = wrk(pmnc.port, args.duration, connections=args.connections)
    on_peer = wrk(peer.port, args.duration, connections=args.connections)
    if args.no_reloads:
        return report_phase_1(pmnc, on_pmnc, on_peer)

    print(f"phase 2: pmnc while interface_http.py is rewritten {RELOADS} times ...", flush=True)
    reloads_before = pmnc.reloads()
    rewriter = Rewriter(pmnc.handler, RELOADS, args.duration)
    rewriter.start()
    try:
        on_reload = wrk(pmnc.port, args.duration, connections=args.connections)
    finally:
        rewriter.cancelled.set()
        rewriter.join(10.0)
    if rewriter.error is not None:
        raise RuntimeError(f"rewriting {pmnc.handler} failed: {rewriter.error!r}")
    try:
        wait_until(lambda: pmnc.reloads() - reloads_before >= rewriter.written, 10.0, "reloads in the log")
    except RuntimeError:
        pass  # reported below
    reloads = pmnc.reloads() - reloads_before
    answer = http_get(pmnc.port)
    serving = answer[1].decode("utf-8", "replace") if answer is not None else "no answer"

    print()
    print_table([("pmnc", on_pmnc), ("uvicorn", on_peer), (f"pmnc during {RELOADS} reloads", on_reload)])
    ratio = on_pmnc.rps / on_peer.rps if on_peer.rps else float("nan")
    print(f"ratio pmnc/uvicorn: {ratio:.2f} (requests/s); during reloads pmnc kept "
          f"{on_reload.rps / on_pmnc.rps if on_pmnc.rps else float('nan'):.2f} of its phase-1 rate")
    print(f"reloads: {rewriter.written} file rewrites, {reloads} 'module interface_http has been reloaded' "
          f"in the cage log; now serving {serving!r} (last written {rewriter.last_greeting!r})")
    print_log_problems(pmnc)
    print(f"http_hello: pmnc {on_pmnc.rps:.0f} req/s, uvicorn {on_peer.rps:.0f} req/s, ratio {ratio:.2f} "
          f"{target_verdict(ratio)}; during {rewriter.written} reloads: {on_reload.rps:.0f} req/s, "
          f"{on_reload.failed} failed")

    ok = (on_pmnc.failed == 0 and on_peer.failed == 0 and on_reload.failed == 0
          and rewriter.written == RELOADS and reloads == RELOADS and serving == rewriter.last_greeting)
    if not ok:
        print("http_hello: NOT CLEAN: see the failed responses, reload count or answer above")
    return 0 if ok else 1


def target_verdict(ratio: float) -> str:
    """`(target >= 0.8: met)` or `(target >= 0.8: NOT met)`, as xmlrpc_echo's summary line says it."""
    return f"(target >= {TARGET:g}: {'met' if ratio >= TARGET else 'NOT met'})"


def report_phase_1(pmnc: PmncCage, on_pmnc: WrkResult, on_peer: WrkResult) -> int:
    """--no-reloads: phase 1's table and summary line only; clean when no response failed."""
    print()
    print_table([("pmnc", on_pmnc), ("uvicorn", on_peer)])
    ratio = on_pmnc.rps / on_peer.rps if on_peer.rps else float("nan")
    print_log_problems(pmnc)
    print(f"http_hello: pmnc {on_pmnc.rps:.0f} req/s, uvicorn {on_peer.rps:.0f} req/s, ratio {ratio:.2f} "
          f"{target_verdict(ratio)}; failed: pmnc {on_pmnc.failed}, uvicorn {on_peer.failed}")
    if on_pmnc.failed or on_peer.failed:
        print("http_hello: NOT CLEAN: see the failed responses above")
        return 1
    return 0


PIN: int | None = None  # --pin: the CPU both servers are kept on (pmnc by its cpu_affinity, uvicorn by this script)


def pinned() -> str:
    return "" if PIN is None else f", kept on CPU {PIN}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of the warm-up run per server (2)")
    parser.add_argument("--connections", type=int, default=WRK_CONNECTIONS,
                        help=f"wrk's connections, on min({WRK_THREADS}, N) threads ({WRK_CONNECTIONS})")
    parser.add_argument("--no-reloads", action="store_true", help="leave out phase 2, the run during reloads")
    parser.add_argument("--pin", type=int, metavar="CPU",
                        help="keep each server on this CPU (pmnc by its cpu_affinity; default: pmnc as shipped, "
                             "cpu_affinity \"auto\", uvicorn where the system puts it)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree and logs, print where")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 1:
        parser.error("--duration and --warmup are whole seconds, at least 1")
    if args.pin is not None and args.pin not in os.sched_getaffinity(0):
        parser.error(f"--pin {args.pin}: not a CPU this machine lets us use")
    global PIN
    PIN = args.pin
    if args.connections < 1:
        parser.error("--connections: at least 1")
    if shutil.which("wrk") is None:
        print("http_hello: wrk is not installed: run ./setup bench (as root) or apt-get install wrk", file=sys.stderr)
        return 2

    # The sample cage lets one address hold half its max_connections (100): more wrk connections than
    # that get 503s, so they get all of it, as its config advises for clients behind a proxy.
    whole_share = args.connections > SAMPLE_SHARE
    if whole_share:
        print(f"http_hello: {args.connections} connections from one address: the sample cage gets "
              f"max_connections_per_ip = its max_connections (its default is half of that, {SAMPLE_SHARE})")
    return run_pair("http_hello", args.keep, lambda base: PmncCage(base, whole_share), Uvicorn,
                    lambda pmnc, peer: bench(args, pmnc, peer))


def run_pair(name: str, keep: bool, make_pmnc: Callable[[Path], Any], make_peer: Callable[[Path], Any],
             run: Callable[[Any, Any], int]) -> int:
    """Run `run(pmnc, peer)` with both servers made in a temporary folder, and
    stop both (and remove the folder unless `keep`) whatever happens."""
    base = Path(tempfile.mkdtemp(prefix="pmnc-bench-"))
    pmnc, peer = make_pmnc(base), make_peer(base)
    try:
        return run(pmnc, peer)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        sys.stdout.flush()
        print(f"{name}: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    finally:
        stopped = [pmnc.stop(), peer.stop()]
        print(f"stopped: {'; '.join(stopped)}")
        if keep:
            print(f"kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
