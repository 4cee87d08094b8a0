"""`python -m portal.worker`: the one worker command, its defaults and its overrides."""

from __future__ import annotations

import psutil

from portal.worker import worker_argv


def test_the_defaults_are_prefork_with_three_processes_and_no_gossip_or_mingle():
    argv = worker_argv([])

    assert argv[0] == "worker"
    assert {
        "--pool=prefork",
        "--concurrency=3",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
    } <= set(argv)
    assert any(a.startswith("--hostname=portal-") and a.endswith("@%h") for a in argv)


def test_options_given_replace_the_defaults_and_others_pass_through():
    argv = worker_argv(["-c", "6", "--pool=threads", "-n", "w2@%h", "--max-tasks-per-child=50"])

    assert not [a for a in argv if a.startswith(("--concurrency=", "--pool=prefork", "--hostname="))]
    assert argv[-6:] == ["-c", "6", "--pool=threads", "-n", "w2@%h", "--max-tasks-per-child=50"]


def test_the_tests_run_the_worker_command_as_deployed(celery_worker):
    assert "concurrency: 3 (prefork)" in celery_worker.output()
    assert len(psutil.Process(celery_worker.pid).children()) == 3
