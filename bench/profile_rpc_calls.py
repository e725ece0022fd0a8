"""Flame graphs of bench/rpc_calls.py's two cages while they call: where a cage-to-cage call's time goes.

    .venv/bin/python bench/profile_rpc_calls.py [--transport direct|nats] [--threads 8] [--calls 60000]
                                                [--seconds 12] [--out bench/profiles]

Starts the caller and echo cages as rpc_calls.py does (and a nats-server for --transport nats),
warms them up, then, while the caller makes `--calls` calls over `--threads` threads, runs
`py-spy record --gil` on each cage process for `--seconds` and writes two SVG flame graphs,
`rpc_calls-<transport>-<threads>-caller.svg` and `...-echo.svg`, to `--out`. `--gil` keeps only
samples of the thread holding the GIL: what the process computes, not what it waits for (py-spy's
idle detection does not tell waiting threads apart on this kind of machine).

py-spy is not a dependency of pmnc: put it on PATH (`python3 -m venv /tmp/pyspy &&
/tmp/pyspy/bin/pip install py-spy`) or give `--py-spy`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from nats_server import NatsServer
from rpc_calls import PmncCages, Run

WARMUP = 500  # calls before the profiled run
SAMPLE_RATE = 250  # samples per second


def profile(args: argparse.Namespace, py_spy: str) -> int:
    base = Path(tempfile.mkdtemp(prefix="pmnc-bench-profile-"))
    broker = NatsServer(base / "nats") if args.transport == "nats" else None
    cages = PmncCages(base, args.transport, broker)
    try:
        if broker is not None:
            broker.start()
        cages.threads = args.threads
        cages.start()
        cages.run(WARMUP, args.threads)
        result: list[Run] = []
        calling = threading.Thread(target=lambda: result.append(cages.run(args.calls, args.threads)))
        calling.start()
        time.sleep(1.0)  # into the run: the profile sees calls in full swing, not its start
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"rpc_calls-{args.transport}-{args.threads}"
        record = [py_spy, "record", "--gil", "-r", str(SAMPLE_RATE), "-d", str(args.seconds), "-f", "flamegraph"]
        spies = {name: subprocess.Popen([*record, "-p", str(pid), "-o", str(args.out / f"{stem}-{name}.svg")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for name, pid in (("caller", cages.caller.pid()), ("echo", cages.echo.pid()))}
        failed = 0
        for name, spy in spies.items():
            _, err = spy.communicate(timeout=args.seconds + 60)
            if spy.returncode != 0:
                failed += 1
                print(f"profile_rpc_calls: py-spy on the {name} cage failed: {err.decode(errors='replace')[-500:]}")
        calling.join()
        run = result[0] if result else None
        if run is not None:
            print(f"profile_rpc_calls: {run.calls} calls over {args.threads} thread(s) in {run.seconds:.1f}s "
                  f"({run.rate:.0f} calls/s, {run.errors} errors), profiled for {args.seconds}s")
        print(f"profile_rpc_calls: {args.out / stem}-caller.svg, {args.out / stem}-echo.svg")
        return 1 if failed or run is None or run.errors else 0
    finally:
        print(f"stopped: {cages.stop()}{'; ' + broker.stop() if broker is not None else ''}")
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--transport", choices=("direct", "nats"), default="direct")
    parser.add_argument("--threads", type=int, default=8, help="threads of the caller (8)")
    parser.add_argument("--calls", type=int, default=60000, help="calls of the profiled run (60000)")
    parser.add_argument("--seconds", type=int, default=12, help="seconds each cage is profiled (12)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "profiles")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy")
    args = parser.parse_args(argv)
    if not Path(args.py_spy).exists():
        parser.error(f"no py-spy at {args.py_spy}: see this script's doc")
    return profile(args, args.py_spy)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
