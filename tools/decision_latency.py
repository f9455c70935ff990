"""Measure credit-decision latency (issue 6) on a throwaway home and broker, then stop the broker.

    python tools/decision_latency.py --port 19592 [--orders 200] [--background 2000] [--duration 20]
                                     [--py-spy FILE] [--keep]

Starts a local broker (`arledger broker start`) under a fresh temporary ARLEDGER_HOME on the given
port, starts `arledger run ingest` and `arledger run relay project` as two processes (as
`measure_decision_latency` does itself), runs `consumers.credit_client.measure_decision_latency`
against them, prints the result as JSON, then stops the workers and the broker.
`--py-spy FILE` samples the ingest worker with py-spy (if installed; not a dependency of the
project) during the load and writes a speedscope profile to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _arledger(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "arledger.cli", *args], env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="broker port (its controller uses the next one)")
    parser.add_argument("--orders", type=float, default=200.0, help="orders per second (default 200)")
    parser.add_argument("--background", type=float, default=2_000.0, help="other events per second (default 2000)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="first seconds not counted (default 3)")
    parser.add_argument("--py-spy", metavar="FILE", default=None,
                        help="sample the ingest worker with py-spy during the load, speedscope profile to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (printed)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="arledger-latency-"))
    env = {**os.environ, "ARLEDGER_HOME": str(home), "ARLEDGER_BROKER_PORT": str(args.port)}
    env.pop("ARLEDGER_KAFKA", None)
    env.pop("ARLEDGER_STORE", None)
    os.environ.update(env)
    started = time.monotonic()
    _arledger(env, "broker", "start")
    workers: list[subprocess.Popen[bytes]] = []
    sampler = None
    try:
        from arledger.settings import Settings
        from consumers.credit_client import measure_decision_latency
        from consumers.topics import ensure_topics

        settings = Settings.from_env()
        ensure_topics(settings)
        log_file = (home / "bench-workers.log").open("ab")
        for names in (("ingest",), ("relay", "project")):
            workers.append(subprocess.Popen([sys.executable, "-m", "arledger.cli", "run", *names,
                                             "--log-level", "warning"], env=env, stdout=log_file,
                                            stderr=subprocess.STDOUT))
        if args.py_spy:
            # Registration and probes take a few seconds before the load: sample them too, and all of the load.
            sampler = subprocess.Popen([shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy", "record", "--nonblocking", "--rate", "200", "--format",
                                        "speedscope", "-o", str(Path(args.py_spy).resolve()), "--pid",
                                        str(workers[0].pid), "--duration", str(int(args.duration + 15))],
                                       stdout=subprocess.DEVNULL)
        result = measure_decision_latency(settings, orders_per_s=args.orders,
                                          background_events_per_s=args.background, duration_s=args.duration,
                                          warmup_s=args.warmup, start_workers=False)
        result["wall_s"] = round(time.monotonic() - started, 1)
        print(json.dumps(result, indent=1))
    finally:
        if sampler is not None:
            sampler.wait(timeout=120)
        for process in workers:
            process.terminate()
        for process in workers:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        _arledger(env, "broker", "stop")
        if args.keep:
            print(f"home kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
