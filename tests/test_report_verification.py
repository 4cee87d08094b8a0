"""The release report's verification figures (issue 20 §6) and its durations and charts (issue 21
§4), from SiteResult rows and step times set here; and the drush role (issue 20 §1): Test
connection and update steps' previews say when the account lacks it, judged against the
simulator's `no_drush_role` (its requests and events)."""

from __future__ import annotations

import bisect
import os
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.urls import reverse

from atlas.simulator.events import DRUSH_EXECUTE, DRUSH_PREPARE, DRUSH_RUN, SITE_UPDATE
from releases import connectivity, reports, services
from releases.admin.report import TOP
from releases.connectivity import DrushRole, drush_key, refusal_cache
from releases.models import Environment, SiteResult, StepRun
from releases.reports.verification import QUEUE_POINTS, verification
from releases.states import SiteState, StepState
from tests.admin_helpers import mark_done, url
from tests.support import R, configure_environments, make_user

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
MISSING = (
    "the account 'release-portal' lacks Atlas's drush role: verification cannot ask for reports; "
    "grant the role or `environment set {env} --verify off`"
)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def plan():
    call_command("loadrunbook", verbosity=0)
    return services.create_plan("2.8.5", commit=R, user=make_user())


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ran(plan, number: int, start: float, end: float | None, state=StepState.SUCCEEDED, **result) -> StepRun:
    """Step `number` as run from T0 + start to T0 + end (seconds), with `result`."""
    StepRun.objects.filter(plan=plan, number=number).update(
        state=state, started_at=at(start), finished_at=None if end is None else at(end), result=result
    )
    return StepRun.objects.get(plan=plan, number=number)


def row(step: StepRun, i: int, batch: int, state=SiteState.SUCCEEDED, **times) -> SiteResult:
    """A site of `step`; `times`: patched, verified, finished, in seconds after T0."""
    return SiteResult(step=step, site_id=f"{step.number:02d}{i:022x}", sid=f"p1{i:010x}", path=f"site-{i}",
                      batch_index=batch, batch_name=f"batch {batch}", state=state,
                      **{f"{k}_at": at(v) for k, v in times.items()})  # fmt: skip


def report_page(client, plan, user=None):
    client.force_login(user or make_user("auditor", permissions=("view_releaseplan",)))
    page = client.get(reverse("admin:releases_releaseplan_report", args=[plan.pk]))
    assert page.status_code == 200
    return page


# -- verification per batch, and the queue of sites updating --------------------------------------


@pytest.fixture
def verified_step(plan):
    """PROD step 14, paused at T0 + 70 s, its environment's max_unverified 5. Batch 0: four sites
    PATCHed at 0, 1, 2, 3 s, verified at 10, 13, 5, 20 s (10, 12, 3, 17 s). Batch 1: one
    verified 9 s after its PATCH, one failed verification, one still updating; a failed write
    and a site succeeded unverified (verification turned off) count in neither."""
    Environment.objects.filter(name="PROD").update(max_unverified=5)
    step = ran(plan, 14, -60, 70, StepState.PAUSED, batches=[{"name": "installed 0"}, {"name": "launched 0"}])
    SiteResult.objects.bulk_create(
        [row(step, i, 0, patched=p, verified=v, finished=v) for i, (p, v) in enumerate([(0, 10), (1, 13), (2, 5), (3, 20)])]
        + [row(step, 4, 1, patched=30, verified=39, finished=39),
           row(step, 5, 1, SiteState.FAILED, patched=30, finished=60),
           row(step, 6, 1, SiteState.UPDATING, patched=50, finished=50),
           row(step, 7, 1, SiteState.FAILED, finished=31),
           row(step, 8, 1, patched=32, finished=61)]
    )  # fmt: skip
    return step


def test_per_batch_sites_verified_failed_and_patch_to_verified_median_and_longest(plan, verified_step):
    (figures,) = verification(plan, list(plan.steps.select_related("environment")))

    assert (figures["number"], figures["environment"], figures["state"]) == (14, "PROD", "paused")
    assert figures["batches"] == [
        {"index": 0, "name": "installed 0", "verified": 4, "failed": 0, "median_seconds": 11.0, "max_seconds": 17.0},
        {"index": 1, "name": "launched 0", "verified": 1, "failed": 1, "median_seconds": 9.0, "max_seconds": 9.0},
    ]  # fmt: skip
    assert figures["updating"] == 1


def test_queue_depth_over_time_its_maximum_and_the_environments_limit(plan, verified_step):
    (figures,) = verification(plan, list(plan.steps.select_related("environment")))

    # Each site counts from its PATCH until verified or failed; the one still updating until the
    # step stopped (70 s); two PATCHed at 30 s are one moment.
    expected = [(0, 1), (1, 2), (2, 3), (3, 4), (5, 3), (10, 2), (13, 1), (20, 0),
                (30, 2), (39, 1), (50, 2), (60, 1), (70, 0)]  # fmt: skip
    assert figures["queue"] == [{"at": at(s).isoformat(), "sites": n} for s, n in expected]
    assert figures["queue_max"] == 4
    assert figures["limit"] == 5 == Environment.objects.get(name="PROD").unverified_limit()


def test_a_step_with_verification_off_has_no_verification_figures(plan):
    step = ran(plan, 14, 0, 60, batches=[{"name": "installed 0"}])
    SiteResult.objects.bulk_create([row(step, i, 0, patched=i, finished=i) for i in range(5)])

    assert verification(plan, list(plan.steps.all())) == []


def test_the_report_page_shows_verification_per_batch_and_the_queue_chart(client, plan, verified_step):
    page = report_page(client, plan)

    html = page.content.decode()
    assert '<tr class="verification" data-step="14" data-batch="0">' in html
    assert '<td class="median">11 s</td><td class="longest">17 s</td>' in html
    assert '<td class="median">9 s</td><td class="longest">9 s</td>' in html
    assert '<strong class="queue-max">4</strong>' in html and '<strong class="queue-limit">5</strong>' in html
    assert "1 still updating" in html
    assert '<polyline class="queue-depth" data-step="14"' in html and '<line class="limit"' in html


# -- 22,000 sites: exact figures, a bounded number of queries ------------------------------------

SITES = 22_000


def _big_step(plan) -> StepRun:
    """Site i PATCHed at i // 10 s (ten a second), verified 30, 31 or 32 s later (i % 3)."""
    step = ran(plan, 14, -1, SITES // 10 + 40, batches=[{"name": f"batch {b}"} for b in range(4)])
    SiteResult.objects.bulk_create(
        [row(step, i, i * 4 // SITES, patched=i // 10, verified=i // 10 + 30 + i % 3, finished=i // 10 + 30 + i % 3)
         for i in range(SITES)],
        batch_size=2000,
    )  # fmt: skip
    return step


def test_the_queue_of_22000_sites_is_exact_and_read_in_one_query(plan, django_assert_num_queries):
    _big_step(plan)
    steps = list(plan.steps.select_related("environment"))

    with django_assert_num_queries(1):
        (figures,) = verification(plan, steps)

    # Independently: at each whole second t (every change is on one), PATCHed by t less ended by t.
    patched = sorted(i // 10 for i in range(SITES))
    ended = sorted(i // 10 + 30 + i % 3 for i in range(SITES))
    depths = [bisect.bisect_right(patched, t) - bisect.bisect_right(ended, t) for t in range(ended[-1] + 1)]
    assert figures["queue_max"] == max(depths) > 300
    assert len(figures["queue"]) <= 2 * QUEUE_POINTS + 1 and figures["queue"][-1]["sites"] == 0
    assert max(p["sites"] for p in figures["queue"]) == max(depths)
    assert [b["verified"] for b in figures["batches"]] == [SITES // 4] * 4
    assert {(b["median_seconds"], b["max_seconds"]) for b in figures["batches"]} == {(31.0, 32.0)}


def test_the_report_page_of_22000_verified_sites_takes_a_bounded_number_of_queries(
    client, plan, django_assert_max_num_queries
):
    _big_step(plan)
    user = make_user("auditor", permissions=("view_releaseplan",))
    client.force_login(user)

    with django_assert_max_num_queries(15):
        page = client.get(reverse("admin:releases_releaseplan_report", args=[plan.pk]))

    assert page.status_code == 200
    assert '<tr class="verification" data-step="14" data-batch="3">' in page.content.decode()


# -- durations: active time, short batches, charts ------------------------------------------------


@pytest.fixture
def dev_then_prod(plan):
    """DEV's steps 2, 3, 4 a minute each from T0, its step 8 six hours later (the finalize wait
    between): 30 s. Step 4's one batch of 2 sites took 0.4 s. PROD's step 14 updates 300 sites
    in ten minutes the next hour."""
    ran(plan, 2, 0, 60)
    ran(plan, 3, 60, 120)
    start = at(125).timestamp()
    dev = ran(plan, 4, 120, 180, batches=[{"name": "webcentral and homepage"}],
              batch_started_at={"0": start}, batch_finished_at={"0": start + 0.4})  # fmt: skip
    ran(plan, 8, 6 * 3600, 6 * 3600 + 30)
    prod = ran(plan, 14, 7 * 3600, 7 * 3600 + 600, batches=[{"name": "installed 0"}])
    SiteResult.objects.bulk_create(
        [row(dev, 0, 0, finished=125.2), row(dev, 1, 0, finished=125.3)]
        + [row(prod, i, 0, finished=7 * 3600 + 2 * i + 1) for i in range(300)]
    )
    return plan


def test_an_environments_time_is_its_steps_time_not_the_wait_for_finalize(dev_then_prod):
    figures = reports.durations(dev_then_prod)

    dev = figures["environments"]["DEV"]
    assert dev["duration_seconds"] == 60 + 60 + 60 + 30
    assert dev["span_seconds"] == 6 * 3600 + 30
    assert dev["sites_updated"] == 2 and dev["sites_per_minute"] == 2.0  # 2 sites in step 4's minute
    assert figures["active_seconds"] == 210 + 600
    assert figures["total_seconds"] == 7 * 3600 + 600


def test_a_batch_under_a_second_has_no_rate(dev_then_prod):
    (step,) = [s for s in reports.durations(dev_then_prod)["steps"] if s["number"] == 4]

    (batch,) = step["batches"]
    assert batch["duration_seconds"] == pytest.approx(0.4, abs=1e-3)
    assert batch["sites_per_minute"] is None


def test_the_page_shows_active_times_short_batches_and_every_environment_full_width(client, dev_then_prod):
    page = report_page(client, dev_then_prod)

    html = page.content.decode()
    assert '<tr data-environment="DEV"><td>DEV</td>' in html
    assert '<td class="duration">3 min 30 s</td>' in html  # DEV: not 6 h
    assert '<tr class="batch" data-step="4" data-batch="0">' in html
    batch_row = html.split('data-step="4" data-batch="0">')[1].split("</tr>")[0]
    assert batch_row.endswith('<td class="duration">under 1 s</td>\n          <td>2 / 2</td><td>—</td>')
    assert 'width="720"' not in html and 'viewBox="0 0 1200 ' in html and "width: 100%" in html
    lines = {line["environment"]: line for line in page.context["chart"]["lines"]}
    assert set(lines) == {"DEV", "PROD"} and lines["DEV"]["color"] != lines["PROD"]["color"]
    for line in lines.values():  # each rises to its own total, and its end is marked
        assert min(float(p.split(",")[1]) for p in line["points"].split()) == TOP
        assert f'<circle cx="{line["end_x"]}" cy="{line["end_y"]}"' in html


# -- the drush role: Test connection and previews --------------------------------------------------


def forget(*environments: Environment) -> None:
    for environment in environments:
        refusal_cache().delete(drush_key(environment))


def execute_requests(sim) -> list[int]:
    """The status of every `POST /drush/<id>/execute` the simulator answered."""
    return [
        status
        for method, path, *_, status in sim.injector.requests
        if method == "POST" and path.endswith("/execute")
    ]


@pytest.fixture
def atlas(simulator):
    """`atlas("PROD", denied=True)`: that environment on a simulator (requests recorded) with
    verification on, its account lacking the drush role when `denied`."""

    def start(name: str, *, denied: bool) -> object:
        sim = simulator(name.lower(), password=os.environ[f"ATLAS_{name}_PASSWORD"])
        if denied:
            sim.deny_drush("release-portal")
        configure_environments({name: sim}, verify=True)
        forget(Environment.objects.get(name=name))
        sim.injector.record = True
        return sim

    return start


def test_connection_says_the_account_lacks_the_drush_role_and_runs_nothing(client, atlas):
    dev = atlas("DEV", denied=True)
    client.force_login(make_user())

    response = client.post(
        reverse("admin:releases_environment_changelist"),
        {"action": "test_connection", "_selected_action": [Environment.objects.get(name="DEV").pk]},
        follow=True,
    )

    ((level, message),) = [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]
    assert level == "error"
    assert message.startswith(f"DEV: Atlas at {dev.url} accepted the credentials of release-portal")
    assert message.endswith(", but " + MISSING.format(env="DEV"))
    assert execute_requests(dev) == [403]
    assert dev.events.of_kind(DRUSH_EXECUTE) == [] and dev.events.of_kind(SITE_UPDATE) == []


def test_connection_with_the_drush_role_executes_the_verification_item_on_no_site(atlas):
    dev = atlas("DEV", denied=False)

    ok, message = connectivity.test_connection(Environment.objects.get(name="DEV"), make_user())

    assert ok and message.endswith("and runs drush for it (verification's reports)"), message
    assert dev.wait_for_commands()
    assert execute_requests(dev) == [200]
    assert [e["matched"] for e in dev.events.of_kind(DRUSH_PREPARE)] == [0]
    assert dev.events.of_kind(DRUSH_RUN) == [] and dev.events.of_kind(SITE_UPDATE) == []
    writes = [(m, p) for m, p, *_ in dev.injector.requests if m != "GET"]
    credentials = ("PATCH", "/code/000000000000000000000000")  # answered 412: changes nothing
    assert writes[0] == credentials and all(p.startswith("/drush") for _, p in writes[1:]), writes


def test_connection_does_not_ask_for_the_drush_role_without_verification_or_while_a_step_verifies(
    plan, atlas
):
    dev = atlas("DEV", denied=True)
    environment = Environment.objects.get(name="DEV")
    ran(plan, 4, 0, None, StepState.RUNNING)

    ok, busy = connectivity.test_connection(environment, make_user("lead"))
    Environment.objects.filter(name="DEV").update(verify=False)
    environment.refresh_from_db()
    off_ok, off = connectivity.test_connection(environment, make_user("other"))

    assert ok and busy.endswith("; the drush role was not checked: step 4 is verifying DEV's sites now")
    assert off_ok and off.endswith("(password from ATLAS_DEV_PASSWORD)")
    assert execute_requests(dev) == []


def test_a_preview_of_update_steps_says_so_asking_atlas_once_per_environment(plan, atlas, monkeypatch):
    test = atlas("TEST", denied=True)
    monkeypatch.delenv("ATLAS_DEV_PASSWORD")  # DEV and PROD send nothing
    monkeypatch.delenv("ATLAS_PROD_PASSWORD")

    first = {p["number"]: p for p in reports.preview(plan)}
    again = {p["number"]: p for p in reports.preview(plan)}

    for number in (6, 11):  # TEST's two update steps
        assert first[number]["drush_role"] == {"code": DrushRole.MISSING, "message": MISSING.format(env="TEST"),
                                               "remembered": False}  # fmt: skip
        assert MISSING.format(env="TEST") in first[number]["note"]
        assert again[number]["drush_role"]["remembered"] is True
    assert "drush_role" not in first[5] and "drush_role" not in first[10]  # code and delete steps
    assert execute_requests(test) == [403]  # one for both steps, none for the second preview


def test_release_preview_and_the_launch_confirmation_say_the_account_lacks_the_drush_role(
    client, plan, atlas
):
    atlas("TEST", denied=True)
    out = StringIO()

    call_command("release", "preview", plan.version, "--step", "6", stdout=out)
    mark_done(plan, 2, 3, 4, 5)
    client.force_login(make_user("launcher"))
    page = client.get(url("launch", plan, 6))

    (note,) = [line for line in out.getvalue().splitlines() if line.startswith("  note: ")]
    assert note.endswith(MISSING.format(env="TEST"))
    assert page.status_code == 200
    assert "lacks Atlas&#x27;s drush role: verification cannot ask for reports" in page.content.decode()


def test_a_preview_with_the_drush_role_says_nothing_of_it(plan, atlas):
    test = atlas("TEST", denied=False)

    (preview,) = reports.preview(plan, 6)

    assert "drush_role" not in preview and "drush" not in preview["note"]
    assert execute_requests(test) == [200]
    assert test.wait_for_commands() and test.events.of_kind(DRUSH_RUN) == []
