"""Benchmark: runbook step 14 (PROD batches) through the portal's engine versus a plain loop.

Both run against a simulated PROD in its own process, with a fixed write latency, at the same
parallelism. Prints both times and their ratio, database queries per site, and peak memory.

    .venv/bin/python bench/step14.py [--sites 2400] [--latency-ms 20] [--parallelism 8]

The step runs in this process (as a worker would run it), so "peak memory" is this process's
maximum resident size. BENCH_TRACEMALLOC=1 adds the step's own peak allocation, but slows the
run (do not compare its times).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORKDIR = Path(tempfile.mkdtemp(prefix="bench-step14-"))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{WORKDIR / 'bench.sqlite3'}")
os.environ.setdefault("CELERY_BROKER_URL", f"filesystem://{WORKDIR / 'broker'}")
os.environ.setdefault("ATLAS_PROD_PASSWORD", "bench-secret")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

R, T = "a" * 39 + "1", "b" * 39 + "2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_simulator(sites: int, latency_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "manage.py",
        "atlas_simulator",
        "--port",
        str(port),
        "--environment",
        "prod",
        "--sites",
        str(sites),
        "--latency-ms",
        str(latency_ms),
        "--pool-refill-delay",
        "3600",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "Atlas simulator" in line:
            return proc, f"http://127.0.0.1:{port}/"
    raise RuntimeError("simulator did not start")


def release_item(client) -> str:
    payload = {
        "git_url": "https://github.com/CuBoulder/express.git",
        "commit_hash": T,
        "meta": {"name": "express", "version": "2.8.5", "code_type": "profile", "is_current": True},
        "deploy": {"registry_rebuild": False, "cache_clear": True, "update_database": True},
    }
    client.create_code(payload)
    return client.find_code("express", "2.8.5", "profile")[0].id


def plain_loop(url: str, parallelism: int, groups: list[dict]) -> tuple[float, int]:
    from atlas.client import AtlasClient
    from atlas.selectors import exclude_profile

    client = AtlasClient(
        url, username="release-portal", password=os.environ["ATLAS_PROD_PASSWORD"], pool_size=parallelism * 2
    )
    profile = release_item(client)
    started = time.perf_counter()
    targets = []
    for where in groups:
        targets += client.list_sites(exclude_profile(where, profile))
    with ThreadPoolExecutor(parallelism) as pool:
        list(pool.map(lambda s: client.update_site_profile(s.id, profile, etag=s.etag), targets))
    return time.perf_counter() - started, len(targets)


def portal_step(url: str, parallelism: int) -> tuple[float, int, int, int]:
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from atlas.client import AtlasClient
    from releases import engine, services
    from releases.models import Environment
    from tests.support import make_user

    call_command("migrate", verbosity=0)
    call_command("loadrunbook", verbosity=0)
    Environment.objects.filter(name="PROD").update(
        api_url=url, parallelism=parallelism, batch_pause_seconds=0, deploy_wait_seconds=0
    )
    client = AtlasClient(url, username="release-portal", password=os.environ["ATLAS_PROD_PASSWORD"])
    release_item(client)
    user = make_user("bench")
    plan = services.create_plan("2.8.5", commit=R, user=user)
    for step in plan.steps.filter(number__in=range(2, 14)).exclude(number=7).order_by("number"):
        services.skip(step, user, "benchmark: only step 14 is measured")
        if step.number == 6:
            services.finalize(plan, tag="2.8.5", commit=T, user=user)
    step = services.get_step(plan, 14)
    from django.db import transaction

    with transaction.atomic():  # launch without enqueueing: the engine runs here, in-process
        step.launch(user)
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start()
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        state = engine.execute(step.pk, "bench")
        elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else (0, 0)
    tracemalloc.stop()
    assert state == "succeeded", (state, step.message)
    return elapsed, step.counts()["targeted"], len(queries), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2400, help="PROD population (about 2,000 targeted)")
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--parallelism", type=int, default=8)
    args = parser.parse_args()

    import django

    django.setup()
    from releases.runbook import DEFAULT_GROUPS

    groups = [
        g.get("where") or {"status": g["status"], "update_group": g["update_group"]}
        for g in DEFAULT_GROUPS[("PROD", 14)]
    ]
    sim, url = start_simulator(args.sites, args.latency_ms)
    try:
        loop_time, loop_sites = plain_loop(url, args.parallelism, groups)
    finally:
        sim.terminate()
    sim, url = start_simulator(args.sites, args.latency_ms)
    try:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        portal_time, sites, queries, peak = portal_step(url, args.parallelism)
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        sim.terminate()
    print(
        f"PROD step 14: {sites} sites, write latency {args.latency_ms:g} ms, parallelism {args.parallelism}"
    )
    print(f"plain client loop : {loop_time:7.2f} s ({loop_sites} sites)")
    print(f"portal step 14    : {portal_time:7.2f} s")
    print(f"ratio portal/loop : {portal_time / loop_time:7.3f}  (target <= 1.10)")
    print(f"database queries  : {queries} in all, {queries / max(sites, 1):.3f} per site")
    traced = f"; {peak / 2**20:.1f} MiB allocated at peak by the step (tracemalloc)" if peak else ""
    print(
        f"peak memory       : process max RSS {rss_after / 1024:.0f} MiB ({rss_before / 1024:.0f} before){traced}"
    )


if __name__ == "__main__":
    main()
