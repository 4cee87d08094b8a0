"""Benchmark: runbook step 14 with verification on, against Atlas's update queue (issue #20 §7).

The deployed shape of `bench/step14.py` (`release launch --step 14 --wait`, Redis, a separate
`python -m portal.worker`, a simulated PROD Atlas in its own process over HTTP), with
verification on (`environment set PROD --verify on --max-unverified K --canary off`): a site
succeeds only once its own statistics report and its page show the release (atlas-api.md §3.6).
Atlas runs its update queue with W workers of U ms per site update, and its command queue
(drush, which writes the reports) with C workers of M ms per site.

The simulator is the `SimulatorServer` that `manage.py atlas_simulator` serves, started by this
script in a process of its own (`--serve`) so that it can also serve its event log (the update
queue, the reports, the page GETs, the drush runs) on a second port; the command has no endpoint
for it. It also counts the statistics items each GET returns (an Eve hook, in that process).

    .venv/bin/python bench/verify.py                                # one row: 16 × 1000 ms, K = 32
    .venv/bin/python bench/verify.py --workers 32 --update-ms 500 --max-unverified 128 --runs 3
    .venv/bin/python bench/verify.py --matrix                       # the table in bench/RESULTS.md

Everything is on one clock (the simulator and the portal run on the same machine): the step runs
from the first site PATCH's arrival at Atlas to the step's finish as the portal recorded it
(`StepRun.finished_at`: every site verified, the sweep read). The physical limit is N·U/W; the
ratio is step / limit. The time the step lost against that limit is Atlas's idle worker-seconds
over W, split by where it fell: while a batch's PATCHes were going out (a full `max_unverified`
window, the ramp-up), between one batch's last PATCH and the next one's first (the batch's last
sites updating and being verified) and after the last PATCH (the same, for the last batch, then
the sweep). Verification latency: a site's update_finished at Atlas → the portal's `verified_at`.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step14 import PASSWORD, ROOT, SITE_PATCH, Bench, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Verification benchmark"
BEGIN, END = "<!-- bench/verify.py: begin -->", "<!-- bench/verify.py: end -->"
BROKER = "redis://127.0.0.1:6379/10"  # not step14.py's database: the two may run at once


# -- the simulator's process (`--serve`) -------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """The simulated PROD Atlas, as `manage.py atlas_simulator` serves it, plus its event log."""
    from atlas.simulator import SimulatorServer
    from atlas.simulator.server import SWITCH_INTERVAL_SECONDS

    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)  # as the command does: this process is Atlas's
    server = SimulatorServer(
        "prod", port=args.port, sites=args.sites, password=PASSWORD, pool_refill_delay=3600,
        update_workers=args.workers, update_ms=args.update_ms,
        command_workers=args.command_workers, command_ms=args.command_ms,
    )  # fmt: skip
    server.set_faults(write_latency_ms=args.latency_ms)
    server.injector.record = True
    events = server.events

    class Events(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(events.snapshot())

        def do_DELETE(self) -> None:
            events.clear()
            self._answer([])

        def _answer(self, body: list) -> None:
            data = json.dumps(body, default=str).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    log_server = ThreadingHTTPServer(("127.0.0.1", args.events_port), Events)
    threading.Thread(target=log_server.serve_forever, daemon=True).start()
    print(f"Atlas simulator at {server.url}, pages at {server.site_url}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    while not stopped.wait(timeout=1):
        pass
    log_server.shutdown()
    server.stop()


# -- the portal, with verification on ----------------------------------------------------------------


@dataclass
class Config:
    sites: int  # PROD population (step 14 targets ~96 % of it)
    workers: int  # W: Atlas's update workers
    update_ms: float  # U
    max_unverified: int  # K
    parallelism: int = 8
    latency_ms: float = 20
    command_workers: int = 8
    command_ms: float = 50
    poll: float | None = None  # ATLAS_VERIFY_POLL_SECONDS for the worker (None: the setting's default)
    read: float | None = None  # ATLAS_VERIFY_READ_SECONDS for the worker (None: the setting's default)
    one_batch: bool = False  # step 14 as one update group: no batch boundary for §2 to drain


class VerifyBench(Bench):
    def __init__(self, config: Config) -> None:
        super().__init__(config.sites, config.latency_ms, config.parallelism)
        self.config = config
        if self.broker == "redis":
            self.env["CELERY_BROKER_URL"] = BROKER
        if config.poll is not None:
            self.env["ATLAS_VERIFY_POLL_SECONDS"] = str(config.poll)
        if config.read is not None:
            self.env["ATLAS_VERIFY_READ_SECONDS"] = str(config.read)

    def start_simulator(self) -> None:
        port, events_port, c = free_port(), free_port(), self.config
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--port", str(port), "--events-port", str(events_port),
             "--sites", str(c.sites), "--workers", str(c.workers), "--update-ms", str(c.update_ms),
             "--command-workers", str(c.command_workers), "--command-ms", str(c.command_ms),
             "--latency-ms", str(c.latency_ms)],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.processes.append(proc)
        for line in proc.stdout:
            found = re.match(r"Atlas simulator at (\S+), pages at (\S+)", line)
            if found:
                self.url, self.site_url = found[1], found[2]
                self.events_url = f"http://127.0.0.1:{events_port}/"
                self.simulator = psutil.Process(proc.pid)
                return
        raise RuntimeError("the simulator did not start")

    def events(self, clear: bool = False) -> list[dict]:
        method = requests.delete if clear else requests.get
        return method(self.events_url, timeout=60).json()

    def prepare(self) -> None:
        super().prepare()  # verification off while plan() deploys the code (step 12)
        c = self.config
        self.manage(
            "environment", "set", "PROD", "--site-url", self.site_url, "--verify", "on",
            "--max-unverified", str(c.max_unverified), "--canary", "off", "--user", "bench",
        )  # fmt: skip
        if c.one_batch:
            self.one_batch()

    def one_batch(self) -> None:
        """Step 14's ten runbook batches as one: the same sites (installed and launched), so that
        the step's time is Atlas's update capacity and the engine's, without §2's drain at each
        batch boundary (`floor_s` says what those boundaries cost any client)."""
        from releases.models import UpdateGroup

        groups = UpdateGroup.objects.filter(environment__name="PROD", step_number=14)
        groups.update(enabled=False)
        UpdateGroup.objects.create(
            environment=groups.first().environment, step_number=14, position=0, name="all, one batch",
            where={"status": {"$in": ["installed", "launched"]}}, edited=True,
        )  # fmt: skip

    def step(self, version: str) -> Figures:
        from releases.models import SiteResult, StepRun

        self.atlas_log(clear=True)
        self.events(clear=True)
        cpu, simulator_cpu, machine = self.worker_cpu(), _cpu(self.simulator), _machine_cpu()
        done = self.manage(
            "release", "launch", version, "--step", "14", "--user", "bench", "--yes", "--wait", check=False
        )
        simulator_cpu, machine = _cpu(self.simulator) - simulator_cpu, _machine_cpu() - machine
        cpu = self.worker_cpu() - cpu
        step = StepRun.objects.get(plan__version=version, number=14)
        if step.state != "succeeded":
            raise RuntimeError(f"step 14 ended {step.state}: {step.message}\n{done.stderr[-2000:]}")
        rows = list(SiteResult.objects.filter(step=step).values_list("site_id", "batch_index", "verified_at"))
        timeline = Timeline(self.atlas_log(), self.events(), rows, self.config.workers)
        figures = timeline.figures(self.config, step.finished_at.timestamp())
        figures.worker_cpu = cpu * 1000 / figures.N
        figures.simulator_cpu = simulator_cpu / figures.step_s
        figures.machine_cpu = machine / (figures.step_s * psutil.cpu_count())
        return figures


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _machine_cpu() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


# -- what Atlas saw -----------------------------------------------------------------------------------


@dataclass
class Figures:
    N: int
    step_s: float  # first site PATCH → the step's finish
    last_page_s: float  # first site PATCH → the last page GET that answered 200
    limit_s: float  # N·U/W
    batches: int
    floor_s: float  # Σ over batches of ⌈n_b/W⌉·U: §2 drains each batch, so no client is faster
    busy_s: float  # first update_started → last update_finished
    lost_in_batches: float  # Atlas's idle worker-seconds / W while a batch's PATCHes went out
    lost_between: float  # … between a batch's last PATCH and the next batch's first
    lost_tail: float  # … after the last PATCH
    latency_median: float  # a site's update_finished → its verified_at
    latency_p90: float
    report_wait: float  # median: update_finished → the first clean report written after it
    max_depth: int  # sites queued or running at Atlas, at most
    statistics_reads: float  # statistics items read per site
    statistics_gets: int  # GET /statistics requests
    pages: float  # page GETs per site
    drush_executes: int
    drush_runs: float  # drush runs (reports asked for) per site
    worker_cpu: float = 0.0  # worker CPU seconds per 1,000 sites
    simulator_cpu: float = 0.0  # the simulator's CPU seconds / the step's seconds
    machine_cpu: float = 0.0  # the machine's busy CPU seconds / (the step's seconds × cores)

    @property
    def ratio(self) -> float:
        return self.step_s / self.limit_s

    @property
    def floor_ratio(self) -> float:
        return self.step_s / self.floor_s


class Timeline:
    """The simulator's request log and event log of one step, with the portal's site rows."""

    def __init__(self, log: list[list], events: list[dict], rows: list[tuple], workers: int) -> None:
        self.workers = workers
        self.batch = {site_id: batch for site_id, batch, _ in rows}
        self.verified = {site_id: at.timestamp() for site_id, _, at in rows if at is not None}
        self.patches = sorted(
            (e[2], e[1].rsplit("/", 1)[1]) for e in log if e[0] == "PATCH" and SITE_PATCH.search(e[1]) and e[4] < 400
        )  # fmt: skip
        self.statistics_gets = sum(
            1 for e in log if e[0] == "GET" and e[1].rstrip("/").endswith("/statistics")
        )
        self.events = sorted(events, key=lambda e: e["at"])
        self.kinds: dict[str, list[dict]] = {}
        for event in self.events:
            self.kinds.setdefault(event["kind"], []).append(event)
        self._running()

    def of(self, kind: str) -> list[dict]:
        return self.kinds.get(kind, [])

    def _running(self) -> None:
        """Atlas's update workers busy over time: a step function (times, running after each)."""
        self.times, self.running, running = [], [], 0
        for event in self.events:
            if event["kind"] == "update_started":
                running += 1
            elif event["kind"] == "update_finished" and not event.get("skipped"):
                running -= 1
            else:
                continue
            self.times.append(event["at"])
            self.running.append(running)

    def idle(self, start: float, end: float) -> float:
        """Atlas's idle worker-seconds between `start` and `end`."""
        if end <= start:
            return 0.0
        busy, at = 0.0, start
        index = bisect.bisect_right(self.times, start)
        running = self.running[index - 1] if index else 0
        while index < len(self.times) and self.times[index] < end:
            busy += running * (self.times[index] - at)
            at, running = self.times[index], self.running[index]
            index += 1
        busy += running * (end - at)
        return self.workers * (end - start) - busy

    def max_depth(self) -> int:
        depth = deepest = 0
        for event in self.events:
            if event["kind"] == "update_queued":
                depth += 1
                deepest = max(deepest, depth)
            elif event["kind"] == "update_finished":
                depth -= 1
        return deepest

    def lost(self, end: float) -> tuple[float, float, float]:
        """Idle worker-seconds / W: while batches' PATCHes went out, between batches, after the last PATCH."""
        windows: dict[int, list[float]] = {}
        for at, site_id in self.patches:
            window = windows.setdefault(self.batch.get(site_id, -1), [at, at])
            window[0], window[1] = min(window[0], at), max(window[1], at)
        spans = sorted(windows.values())
        within = sum(self.idle(first, last) for first, last in spans)
        between = sum(self.idle(spans[i][1], spans[i + 1][0]) for i in range(len(spans) - 1))
        tail = self.idle(spans[-1][1], end)
        return within / self.workers, between / self.workers, tail / self.workers

    def batch_sizes(self) -> list[int]:
        sizes: dict[int, int] = {}
        for batch in self.batch.values():
            sizes[batch] = sizes.get(batch, 0) + 1
        return list(sizes.values())

    def latencies(self) -> tuple[list[float], list[float]]:
        """Per site: update_finished → verified_at, and update_finished → its first clean report."""
        finished = {e["id"]: e["at"] for e in self.of("update_finished") if not e.get("skipped")}
        reported: dict[str, float] = {}
        for event in self.of("statistics_report"):
            done = finished.get(event["id"])
            if done is not None and event["at"] >= done and not event["error"]:
                reported.setdefault(event["id"], event["at"])
        verified = [self.verified[s] - at for s, at in finished.items() if s in self.verified]
        return verified, [at - finished[s] for s, at in reported.items()]

    def figures(self, config: Config, finished_at: float) -> Figures:
        n = len(self.batch)
        start = self.patches[0][0]
        pages = self.of("page_get")
        verified, reports = self.latencies()
        deciles = statistics.quantiles(verified, n=10) if len(verified) > 1 else [0.0] * 9
        return Figures(
            N=n, step_s=finished_at - start,
            last_page_s=max(e["at"] for e in pages if e["status"] == 200) - start,
            limit_s=n * config.update_ms / 1000 / config.workers,
            batches=len(self.batch_sizes()),
            floor_s=sum(-(-size // config.workers) for size in self.batch_sizes()) * config.update_ms / 1000,
            busy_s=self.of("update_finished")[-1]["at"] - self.of("update_started")[0]["at"],
            **dict(zip(("lost_in_batches", "lost_between", "lost_tail"), self.lost(finished_at), strict=True)),
            latency_median=statistics.median(verified), latency_p90=deciles[8],
            report_wait=statistics.median(reports) if reports else float("nan"),
            max_depth=self.max_depth(),
            statistics_reads=sum(len(e["sites"]) for e in self.of("statistics_read")) / n,
            statistics_gets=self.statistics_gets, pages=len(pages) / n,
            drush_executes=len(self.of("drush_execute")), drush_runs=len(self.of("drush_run")) / n,
        )  # fmt: skip


# -- rows, the table and RESULTS.md -------------------------------------------------------------------


def measure(config: Config, runs: int) -> dict:
    bench = VerifyBench(config)
    try:
        bench.start_simulator()
        bench.prepare()
        bench.start_worker()
        figures = []
        for round_ in range(runs):
            figures.append(bench.step(bench.plan(round_)))
            if figures[-1].max_depth > config.max_unverified:
                raise AssertionError(f"Atlas's queue held {figures[-1].max_depth} sites, more than K")
        row = {name: statistics.median(getattr(f, name) for f in figures) for name in asdict(figures[0])}
        row.update(
            config=asdict(config), broker=bench.broker, runs=[f.ratio for f in figures],
            ratio=statistics.median(f.ratio for f in figures), rss=bench.worker_peak_rss(),
            floor_ratio=statistics.median(f.floor_ratio for f in figures),
            max_depth=max(f.max_depth for f in figures),
        )  # fmt: skip
        return row
    finally:
        bench.stop()


HEADER = (
    "| N | batches | W | U ms | K | limit s | floor s | step s | ratio | ratio to floor | last page s | Atlas busy s "
    "| lost s: in batches / between / tail | verify latency s (median / p90) | report wait s "
    "| max queue depth | statistics reads/site | page GETs/site | drush executes | drush runs/site "
    "| worker CPU s/1k sites | worker peak RSS MiB | simulator CPU % of a core |"
)


def table(rows: list[dict]) -> str:
    lines = [HEADER, "|---" * (HEADER.count("|") - 1) + "|"]
    for r in rows:
        c = r["config"]
        ratio = f"{r['ratio']:.2f}" + (
            f" ({min(r['runs']):.2f}–{max(r['runs']):.2f})" if len(r["runs"]) > 1 else ""
        )
        lines.append(
            f"| {r['N']:.0f} | {r['batches']:.0f} | {c['workers']} | {c['update_ms']:g} | {c['max_unverified']} "
            f"| {r['limit_s']:.1f} | {r['floor_s']:.1f} | {r['step_s']:.1f} | {ratio} | {r['floor_ratio']:.2f} "
            f"| {r['last_page_s']:.1f} | {r['busy_s']:.1f} "
            f"| {r['lost_in_batches']:.1f} / {r['lost_between']:.1f} / {r['lost_tail']:.1f} "
            f"| {r['latency_median']:.1f} / {r['latency_p90']:.1f} | {r['report_wait']:.1f} "
            f"| {r['max_depth']} | {r['statistics_reads']:.2f} | {r['pages']:.2f} | {r['drush_executes']:.0f} "
            f"| {r['drush_runs']:.2f} | {r['worker_cpu']:.2f} | {r['rss'] / 2**20:.0f} "
            f"| {r['simulator_cpu']:.0%} |"
        )  # fmt: skip
    return "\n".join(lines)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor() or "?",
    )  # fmt: skip
    memory = psutil.virtual_memory().total / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{psutil.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}, load {load}"


def block(rows: list[dict], started: str, host: str, minutes: float) -> str:
    c = rows[0]["config"]
    poll = c["poll"] if c["poll"] is not None else "the default (3 s)"
    return "\n".join([
        BEGIN,
        f"`bench/verify.py --matrix`, run on {started} on {host}. Broker: {rows[0]['broker']}; "
        f"database: SQLite; Atlas: simulated PROD in its own process, {c['command_workers']} command "
        f"workers of {c['command_ms']:g} ms, {c['latency_ms']:g} ms per write; parallelism "
        f"{c['parallelism']}; verification poll: {poll}; one run per row; the matrix took "
        f"{minutes:.0f} minutes.",
        "",
        table(rows),
        END,
    ])  # fmt: skip


def write_results(text: str) -> None:
    """Replace the generated block of the section (prose around it stays), or append the section."""
    current = RESULTS.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        RESULTS.write_text(head + text + rest.split(END, 1)[1])
    else:
        RESULTS.write_text(current.rstrip("\n") + f"\n\n{SECTION}\n\n{text}\n")


MATRIX = [  # (population, W, U ms): step 14 targets ~96 % of it (N); K = 2W and 4W each. The
    # populations keep each row's limit N·U/W at 17–65 s, and the matrix near 15 minutes.
    (600, 16, 1000),
    (1150, 32, 500),
    (300, 8, 2000),
]


def run_row(args: list[str]) -> str:
    """One row in a process of its own; stopped with SIGTERM so that it stops its own children."""
    with subprocess.Popen(
        [sys.executable, __file__, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            out, err = proc.communicate()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    if proc.returncode:
        raise RuntimeError(f"row {' '.join(args)} failed:\n{err[-3000:]}")
    return out


def main() -> None:
    # SIGTERM ends a row as Ctrl-C does: its simulator and worker are stopped (`finally` in `measure`).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1150, help="PROD population (step 14 targets ~96%%)")
    parser.add_argument("--workers", type=int, default=16, help="W: Atlas's update workers")
    parser.add_argument("--update-ms", type=float, default=1000, help="U: ms per site update")
    parser.add_argument("--max-unverified", type=int, default=None, help="K (default 2W)")
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=20, help="Atlas's latency per write")
    parser.add_argument("--command-workers", type=int, default=8, help="Atlas's drush workers")
    parser.add_argument("--command-ms", type=float, default=50, help="ms per drush run on one site")
    parser.add_argument("--poll", type=float, default=None, help="ATLAS_VERIFY_POLL_SECONDS for the worker")
    parser.add_argument("--read", type=float, default=None, help="ATLAS_VERIFY_READ_SECONDS for the worker")
    parser.add_argument("--one-batch", action="store_true", help="Step 14's sites as one update group")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--matrix", action="store_true", help="Every row of bench/RESULTS.md, then write it")
    parser.add_argument("--json", action="store_true", help="Print one row's figures as JSON.")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--events-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args)
    common = dict(
        parallelism=args.parallelism, latency_ms=args.latency_ms, command_workers=args.command_workers,
        command_ms=args.command_ms, poll=args.poll, read=args.read, one_batch=args.one_batch,
    )  # fmt: skip
    if not args.matrix:
        k = args.max_unverified or 2 * args.workers
        row = measure(Config(args.sites, args.workers, args.update_ms, k, **common), args.runs)
        print(json.dumps(row) if args.json else table([row]), flush=True)
        return
    started, host, rows = datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), machine(), []
    began = time.monotonic()
    for sites, workers, update_ms in MATRIX:
        for k in (2 * workers, 4 * workers):
            # Each row in a process of its own: a fresh database, worker and simulator.
            out = run_row(
                ["--sites", str(sites), "--workers", str(workers), "--update-ms", str(update_ms),
                 "--max-unverified", str(k), "--json",
                 *(f"--{name.replace('_', '-')}" + ("" if value is True else f"={value}")
                   for name, value in common.items() if value is not None and value is not False)]
            )  # fmt: skip
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"done: W={workers}, U={update_ms} ms, K={k}", file=sys.stderr, flush=True)
    print(table(rows))
    write_results(block(rows, started, host, (time.monotonic() - began) / 60))


if __name__ == "__main__":
    main()
