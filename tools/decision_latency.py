"""Measure credit-decision latency (issue 6) on a throwaway home and broker, then stop the broker.

    python tools/decision_latency.py --port 19592 [--orders 200] [--background 2000] [--duration 20]
                                     [--py-spy FILE] [--keep]

Starts a local broker (`arledger broker start`) under a fresh temporary ARLEDGER_HOME on the given
port, starts `arledger run ingest` and `arledger run relay project` as two processes (as
`measure_decision_latency` does itself), runs `consumers.credit_client.measure_decision_latency`
against them, prints the result as JSON, then stops the workers and the broker.
`--py-spy FILE` samples the ingest worker with py-spy (if installed; not a dependency of the
project) during the load and writes a speedscope profile to FILE.

The result also says where the machine's CPU went during the middle half of the run (inside the
load): `cpu_percent` of the ingest worker, the relay+projector, the broker, this process (the load
generator and the decisions' consumer) and of everything else on the machine (100 % = one core).
On a shared machine the latency depends on that last figure as much as on arledger.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


CPU_SAMPLE_S = 0.5


def _arledger(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "arledger.cli", *args], env=env, check=True, stdout=sys.stderr)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuSampler(threading.Thread):
    """Samples the CPU time of named processes and of the machine every CPU_SAMPLE_S."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(name="cpu-sampler", daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float], float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(CPU_SAMPLE_S):
            self.samples.append((time.monotonic(), {name: _cpu_s(pid) for name, pid in self.pids.items()},
                                 _machine_busy_s()))

    def middle_half_percent(self) -> dict[str, float]:
        if len(self.samples) < 4:
            return {}
        t0, ours0, busy0 = self.samples[len(self.samples) // 4]
        t1, ours1, busy1 = self.samples[3 * len(self.samples) // 4]
        percent = {name: round(100 * (ours1[name] - ours0[name]) / (t1 - t0)) for name in self.pids}
        percent["everything_else"] = round(100 * ((busy1 - busy0) - sum(ours1[n] - ours0[n] for n in self.pids))
                                           / (t1 - t0))
        return percent


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
            py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
            sampler = subprocess.Popen([py_spy, "record", "--nonblocking", "--rate", "200", "--format", "speedscope",
                                        "-o", str(Path(args.py_spy).resolve()), "--pid", str(workers[0].pid),
                                        "--duration", str(int(args.duration + 15))], stdout=subprocess.DEVNULL)
        broker_pid = int((home / "kafka" / "broker.pid").read_text().strip())
        cpu = CpuSampler({"ingest": workers[0].pid, "relay_project": workers[1].pid, "broker": broker_pid,
                          "load_generator": os.getpid()})
        cpu.start()
        result = measure_decision_latency(settings, orders_per_s=args.orders,
                                          background_events_per_s=args.background, duration_s=args.duration,
                                          warmup_s=args.warmup, start_workers=False)
        cpu.stopping.set()
        result["wall_s"] = round(time.monotonic() - started, 1)
        result["cpu_percent"] = cpu.middle_half_percent()
        result["cores"] = os.cpu_count()
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
