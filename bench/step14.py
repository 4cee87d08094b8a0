"""Benchmark: runbook step 14 (PROD batches) as the portal is deployed, against a bare client.

The portal runs in the shape users deploy it: `manage.py release launch --step 14 --wait` from
the command line, the broker (Redis when it answers on localhost, else the embedded filesystem
broker), a separate worker process (`python -m portal.worker`), and a simulated PROD Atlas in its own
process over HTTP. The bare client is a thread pool of the same size doing the same batches
(each batch read with max_results=2000, then PATCHed with If-Match) on the same simulator in the
same run. Both are timed on Atlas's clock: the simulator's request log, from the first request to
the answer to the last site PATCH.

    .venv/bin/python bench/step14.py                      # 2,300 sites, 20 ms, parallelism 8, 3 runs
    .venv/bin/python bench/step14.py --sites 12000 --latency-ms 100 --parallelism 16 --runs 1
    .venv/bin/python bench/step14.py --matrix             # the table in bench/RESULTS.md (20–30 min)

Columns: N (sites step 14 targeted), latency, parallelism, bare s and portal s (median of the
runs, with min–max), ratio (median of per-run ratios), time to the first site PATCH (portal /
bare), mean site PATCHes in flight (portal / bare), database queries per site (all of the step's
threads), worker CPU seconds per 1,000 sites, worker peak RSS (VmHWM of the worker process tree),
and whether the simulator, not the client, may have set the pace: the mean time Atlas took per
site PATCH (its latency plus its own work and waits; portal / bare), the simulator process's CPU
as a share of one core and the whole machine's CPU as a share of all its cores, over the run
(portal / bare). One Python process uses at most one core (the GIL), so a simulator near 100 %
of a core, or a machine near 100 %, is the limit of that row for both clients.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PASSWORD = "bench-secret"
SITE_PATCH = re.compile(r"/sites/[0-9a-f]{24}$")
WORKER = [sys.executable, "-m", "portal.worker"]  # the one worker command, with its defaults


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.3) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Run:
    seconds: float
    first_write: float
    in_flight: float
    patches: int
    per_patch: float  # mean seconds from a site PATCH's arrival to its answer (latency included)
    atlas_cpu: float = 0.0  # the simulator process's CPU seconds / the run's seconds (1.0 = a core)
    machine_cpu: float = 0.0  # the machine's busy CPU seconds / (the command's seconds × cores)


class CpuMeter:
    """CPU used by one process and by the whole machine between `start` and `stop`."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def start(self) -> None:
        self.began = time.monotonic(), self._process(), self._machine()

    def stop(self, run: Run) -> Run:
        wall, process, machine = (now - then for now, then in zip(
            (time.monotonic(), self._process(), self._machine()), self.began, strict=True))  # fmt: skip
        # The simulator works only on requests, all inside the run on Atlas's clock; the
        # machine's share is over the whole command (the portal's includes its start-up).
        run.atlas_cpu = process / run.seconds
        run.machine_cpu = machine / (wall * psutil.cpu_count())
        return run

    def _process(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    @staticmethod
    def _machine() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def atlas_clock(log: list[list]) -> Run:
    """Time from the first request to the last site PATCH's answer, on the simulator's clock."""
    patches = [e for e in log if e[0] == "PATCH" and SITE_PATCH.search(e[1]) and e[4] < 400]
    start = min(e[2] for e in log)
    first, last = min(e[2] for e in patches), max(e[3] for e in patches)
    busy = sum(e[3] - e[2] for e in patches)
    return Run(last - start, first - start, busy / (last - first), len(patches), busy / len(patches))


class Bench:
    def __init__(self, sites: int, latency_ms: float, parallelism: int) -> None:
        self.sites, self.latency_ms, self.parallelism = sites, latency_ms, parallelism
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-step14-"))
        broker = "redis://127.0.0.1:6379/9" if redis_answers() else f"filesystem://{self.workdir / 'broker'}"
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.workdir / 'portal.sqlite3'}",
            "CELERY_BROKER_URL": broker,
            "ATLAS_PROD_PASSWORD": PASSWORD,
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "LOG_LEVEL": "WARNING",
            "DEBUG": "true",
        }
        self.broker = broker.split(":")[0]
        self.processes: list[subprocess.Popen] = []

    # -- processes -------------------------------------------------------------------------------

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            check=check,
        )  # fmt: skip

    def start_simulator(self) -> None:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "atlas_simulator", "--port", str(port), "--environment", "prod",
             "--sites", str(self.sites), "--latency-ms", str(self.latency_ms), "--password", PASSWORD,
             "--pool-refill-delay", "3600", "--request-log"],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.processes.append(proc)
        for line in proc.stdout:
            if "Atlas simulator" in line:
                self.url = f"http://127.0.0.1:{port}/"
                self.atlas_cpu = CpuMeter(proc.pid)
                return
        raise RuntimeError("the simulator did not start")

    def start_worker(self) -> None:
        proc = subprocess.Popen(
            [*WORKER, "--loglevel=WARNING", "-n", f"bench-{os.getpid()}@%h"],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.processes.append(proc)
        self.worker = psutil.Process(proc.pid)
        time.sleep(3)  # the worker connects to the broker and starts consuming

    def worker_cpu(self) -> float:
        total = 0.0
        for process in [self.worker, *self.worker.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
        return total

    def worker_peak_rss(self) -> int:
        peak = 0
        for process in [self.worker, *self.worker.children(recursive=True)]:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = max(peak, int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024)
        return peak

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    # -- the simulator's clock ---------------------------------------------------------------

    def atlas_log(self, clear: bool = False) -> list[list]:
        method = requests.delete if clear else requests.get
        return method(self.url + "_simulator/requests", timeout=60).json()

    # -- the portal ------------------------------------------------------------------------------

    def prepare(self) -> None:
        os.environ.update(self.env)
        import django

        django.setup()
        self.manage("migrate", "--verbosity", "0")
        self.manage("loadrunbook", "--verbosity", "0")
        from django.contrib.auth.models import Permission, User

        from releases.models import Environment

        Environment.objects.filter(name="PROD").update(
            api_url=self.url, parallelism=self.parallelism, batch_pause_seconds=0, deploy_wait_seconds=0,
            pool_wait_seconds=0, read_timeout_seconds=60,
            # The bare client only PATCHes: compare like with like (verification has its own figures).
            verify=False, canary=False,
        )  # fmt: skip
        user = User.objects.create_user("bench", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="releases"))

    def plan(self, round_: int) -> str:
        """A fresh release whose step 14 is next: earlier steps skipped, step 12 run by the worker."""
        from releases import services
        from releases.models import ReleasePlan

        version = f"9.{round_}.0"
        release, final = f"{round_ + 1:x}".rjust(40, "a"), f"{round_ + 1:x}".rjust(40, "b")
        user = services.resolve_user("bench")
        plan = services.create_plan(version, commit=release, user=user)
        for number in (2, 3, 4, 5, 6, 8, 9, 10, 11):
            if number == 8:
                services.finalize(plan, tag=version, commit=final, user=user)
            services.skip(services.get_step(plan, number), user, "benchmark: step 14 only")
        self.manage("release", "launch", version, "--step", "12", "--user", "bench", "--yes", "--wait")
        services.skip(services.get_step(ReleasePlan.objects.get(version=version), 13), user, "benchmark")
        return version

    def portal(self, version: str) -> tuple[Run, int, int, float]:
        from releases.models import StepRun

        self.atlas_log(clear=True)
        cpu = self.worker_cpu()
        self.atlas_cpu.start()
        done = self.manage(
            "release", "launch", version, "--step", "14", "--user", "bench", "--yes", "--wait", check=False
        )
        run = self.atlas_cpu.stop(atlas_clock(self.atlas_log()))
        cpu = self.worker_cpu() - cpu
        step = StepRun.objects.get(plan__version=version, number=14)
        if step.state != "succeeded":
            raise RuntimeError(f"step 14 ended {step.state}: {step.message}\n{done.stderr[-2000:]}")
        targeted = step.counts()["targeted"]
        return run, targeted, step.result.get("db_queries", 0), cpu

    # -- the bare client -------------------------------------------------------------------------

    def bare(self, round_: int) -> Run:
        """The same batches by a plain thread pool: read a batch, PATCH it, next batch."""
        from releases.models import UpdateGroup

        session = requests.Session()
        session.auth = ("release-portal", PASSWORD)
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=self.parallelism * 2))
        decoy = session.post(
            self.url + "code",
            json={
                "git_url": "https://github.com/CuBoulder/express.git",
                "commit_hash": f"{round_ + 1:x}".rjust(40, "c"),
                "meta": {"name": "express", "version": f"8.{round_}.0", "code_type": "profile",
                         "is_current": False},
                "deploy": {"registry_rebuild": False, "cache_clear": True, "update_database": True},
            },
            timeout=60,
        ).json()["_id"]  # fmt: skip
        groups = UpdateGroup.objects.filter(environment__name="PROD", step_number=14, enabled=True)
        self.atlas_log(clear=True)
        self.atlas_cpu.start()

        def patch(site: dict) -> None:
            response = session.patch(
                f"{self.url}sites/{site['_id']}", json={"code": {"profile": decoy}},
                headers={"If-Match": site["_etag"]}, timeout=60,
            )  # fmt: skip
            response.raise_for_status()

        with ThreadPoolExecutor(self.parallelism) as pool:
            for group in groups.order_by("position", "id"):
                where = {**group.selector(), "code.profile": {"$ne": decoy}}
                sites, page = [], 1
                while True:
                    body = session.get(
                        self.url + "sites",
                        params={"where": json.dumps(where), "max_results": 2000, "sort": "_id", "page": page},
                        timeout=60,
                    ).json()
                    sites += body["_items"]
                    if "next" not in body["_links"]:
                        break
                    page += 1
                list(pool.map(patch, sites))
        return self.atlas_cpu.stop(atlas_clock(self.atlas_log()))


def measure(sites: int, latency_ms: float, parallelism: int, runs: int) -> dict:
    bench = Bench(sites, latency_ms, parallelism)
    try:
        bench.start_simulator()
        bench.prepare()
        bench.start_worker()
        bare, portal, ratios, queries, cpu, targeted = [], [], [], [], [], 0
        for round_ in range(runs):
            version = bench.plan(round_)
            # Alternate which goes first, so that a drift in the machine's speed favours neither.
            if round_ % 2:
                run, targeted, n_queries, seconds = bench.portal(version)
                bare.append(bench.bare(round_))
            else:
                bare.append(bench.bare(round_))
                run, targeted, n_queries, seconds = bench.portal(version)
            portal.append(run)
            ratios.append(run.seconds / bare[-1].seconds)
            queries.append(n_queries / targeted)
            cpu.append(seconds * 1000 / targeted)
        return {
            "N": targeted, "latency": latency_ms, "parallelism": parallelism, "broker": bench.broker,
            "bare": [r.seconds for r in bare], "portal": [r.seconds for r in portal], "ratio": ratios,
            "first_write": (statistics.median(r.first_write for r in portal),
                            statistics.median(r.first_write for r in bare)),
            "in_flight": (statistics.median(r.in_flight for r in portal),
                          statistics.median(r.in_flight for r in bare)),
            "per_patch": (statistics.median(r.per_patch for r in portal),
                          statistics.median(r.per_patch for r in bare)),
            "queries": statistics.median(queries), "cpu": statistics.median(cpu),
            "rss": bench.worker_peak_rss(),
            "atlas_cpu": (statistics.median(r.atlas_cpu for r in portal),
                          statistics.median(r.atlas_cpu for r in bare)),
            "machine_cpu": (statistics.median(r.machine_cpu for r in portal),
                            statistics.median(r.machine_cpu for r in bare)),
        }  # fmt: skip
    finally:
        bench.stop()


def spread(values: list[float]) -> str:
    median = statistics.median(values)
    return f"{median:6.2f}" + (f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else "")


def print_table(rows: list[dict]) -> None:
    print(
        "| N | latency ms | parallelism | bare s | portal s | ratio | first write s (portal/bare) "
        "| in flight (portal/bare) | queries/site | worker CPU s/1k sites | worker peak RSS MiB "
        "| Atlas ms per PATCH (portal/bare) | simulator CPU % of a core (portal/bare) "
        "| machine CPU % (portal/bare) |"
    )
    print("|---" * 14 + "|")
    for r in rows:
        print(
            f"| {r['N']} | {r['latency']:g} | {r['parallelism']} | {spread(r['bare'])} | {spread(r['portal'])} "
            f"| {spread(r['ratio'])} | {r['first_write'][0]:.3f} / {r['first_write'][1]:.3f} "
            f"| {r['in_flight'][0]:.1f} / {r['in_flight'][1]:.1f} | {r['queries']:.3f} | {r['cpu']:.2f} "
            f"| {r['rss'] / 2**20:.0f} | {r['per_patch'][0] * 1000:.1f} / {r['per_patch'][1] * 1000:.1f} "
            f"| {r['atlas_cpu'][0]:.0%} / {r['atlas_cpu'][1]:.0%} "
            f"| {r['machine_cpu'][0]:.0%} / {r['machine_cpu'][1]:.0%} |",
            flush=True,
        )


MATRIX = [  # (population, latency ms, parallelism, runs): step 14 targets ~88% of the population
    (2300, 20, 8, 3),
    (2300, 100, 8, 3),
    (2300, 20, 4, 3),
    (2300, 20, 16, 3),
    (2300, 20, 32, 3),
    (2300, 200, 32, 3),  # Atlas slower than the simulator's own limit: can 32 stay in flight?
    (11400, 20, 8, 1),
    (22700, 20, 8, 1),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2300, help="PROD population (step 14 targets ~88%%)")
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--matrix", action="store_true", help="Run every configuration of the README table.")
    parser.add_argument("--json", action="store_true", help="Print one configuration's figures as JSON.")
    args = parser.parse_args()
    if not args.matrix:
        row = measure(args.sites, args.latency_ms, args.parallelism, args.runs)
        if args.json:
            print(json.dumps(row))
            return
        rows = [row]
    else:
        rows = []
        for sites, latency, parallelism, runs in MATRIX:
            # Each configuration in a process of its own: a fresh database, worker and simulator.
            out = subprocess.run(
                [sys.executable, __file__, "--sites", str(sites), "--latency-ms", str(latency),
                 "--parallelism", str(parallelism), "--runs", str(runs), "--json"],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(
                f"done: {sites} sites, {latency:g} ms, parallelism {parallelism}", file=sys.stderr, flush=True
            )
    print(f"broker: {rows[0]['broker']}; database: SQLite; Atlas: simulated PROD in a separate process")
    print_table(rows)


if __name__ == "__main__":
    main()
