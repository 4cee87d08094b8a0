"""Issue 21 §1–§2: the plan page names the one next action (`data-next`) and why later steps
wait; a Launch control only where the launch check passes, the other rows say why; the launch
confirmation states a refusal before asking for anything; success messages end with the next
action."""

import re

import pytest

from releases import guidance, launchability, services
from releases.models import AuditEvent, StepRun
from releases.wording import spans
from tests.admin_helpers import confirm_launch, mark_done, messages_of, url
from tests.support import R, T, configure_environments

# Nothing is enqueued: `send_task` is replaced for every test (`sent_tasks`), so tests count it.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent_tasks")]


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).replace("&#x27;", "'")


def _next(html: str) -> str:
    return _text(html.split("data-next>")[1].split("</span>")[0]).strip()


def _row(html: str, number: int) -> str:
    return html.split(f'id="step-{number}"')[1].split('id="step-')[0]


def _launch_controls(html: str) -> list[int]:
    """The step numbers whose row offers a Launch control."""
    rows = html.split('id="release-steps"')[1]
    return [n for n in range(1, 15) if re.search(r">Launch (step|stage)", _row(rows, n))]


def test_spans_group_consecutive_numbers():
    assert spans([3, 4, 5, 8]) == "steps 3–5 and 8"
    assert spans([7]) == "step 7"
    assert spans([2, 3, 4, 5, 6, 8, 9, 10, 11]) == "steps 2–6 and 8–11"


def test_a_new_plan_names_the_dev_stage_and_offers_no_other_launch(client, operator, plan):
    client.force_login(operator)
    html = client.get(url("change", plan)).content.decode()
    assert _next(html) == "Launch stage DEV — steps 2–4"
    assert "Stage TEST — steps 5–6 opens when DEV steps 2–4 have succeeded." in _text(html)
    assert "After that: finalize (step 7) → stage DEV — step 8 → stage TEST — steps 9–11 → " in _text(html)
    assert _launch_controls(html) == [2]
    assert "Launch stage PROD" not in html and "Launch stage TEST" not in html
    assert "Waits for steps 2–11" in _text(_row(html, 12))
    assert "Finalize opens when DEV steps 2–4 and TEST steps 5–6 have succeeded" in _text(_row(html, 7))


def test_after_dev_the_next_action_is_test_and_finalize_says_what_it_waits_for(client, operator, plan_at):
    plan = plan_at(5)
    client.force_login(operator)
    html = client.get(url("change", plan)).content.decode()
    assert _next(html) == "Launch stage TEST — steps 5–6"
    assert "Finalize (step 7) opens when TEST steps 5–6 have succeeded." in _text(html)
    assert _launch_controls(html) == [5]
    assert "Finalize opens when TEST steps 5–6 have succeeded" in _text(_row(html, 7))
    assert 'value="Finalize"' not in html


def test_after_test_finalize_then_dev_8_then_test_then_prod(client, operator, plan_at):
    plan = plan_at(7)
    client.force_login(operator)
    html = client.get(url("change", plan)).content.decode()
    assert _next(html).startswith("Finalize")
    assert 'href="#step-7">Finalize' in html  # the link goes to the form
    assert 'value="Finalize"' in _row(html, 7)
    response = client.post(url("finalize", plan), {"tag": "2.8.5", "commit": T})
    (message,) = messages_of(response)
    assert message[1].endswith("Next: launch stage DEV — step 8.")
    html = client.get(url("change", plan)).content.decode()
    assert _next(html) == "Launch stage DEV — step 8"
    assert "Stage TEST — steps 9–11 opens when DEV step 8 has succeeded." in _text(html)
    assert "After that: stage PROD — steps 12–14." in _text(html)
    assert _launch_controls(html) == [8]


def test_a_finalized_gate_offers_no_finalize_button_only_a_folded_correction(client, operator, plan_at):
    plan = plan_at(7)
    services.finalize(plan, tag="2.8.5", commit=T, user=operator)
    client.force_login(operator)
    row = _row(client.get(url("change", plan)).content.decode(), 7)
    assert 'data-state="succeeded"' in row
    assert 'value="Finalize"' not in row
    assert "<details><summary>Correct the tag or commit…</summary>" in row
    StepRun.objects.filter(plan=plan, number=8).update(state="succeeded", started_at="2026-01-01T00:00Z")
    row = _row(client.get(url("change", plan)).content.decode(), 7)
    assert "Correct the tag" not in row


def test_steps_queued_in_a_running_stage_offer_no_launch_and_say_so(client, operator, plan_at):
    plan = plan_at(3)
    StepRun.objects.filter(plan=plan, number=3).update(state="running", continue_stage=True)
    client.force_login(operator)
    html = client.get(url("change", plan)).content.decode()
    assert _launch_controls(html) == []
    assert "Queued in stage DEV: starts by itself after step 3" in _text(_row(html, 4))
    assert _next(html) == "Wait: step 3 is running on DEV (stage DEV: step 4 follows)"
    assert "Then: Launch stage TEST — steps 5–6." in _text(html)
    refusal = launchability.launch_refusal(StepRun.objects.get(plan=plan, number=4))
    assert refusal == (
        "step 4 cannot start: it is queued in the running DEV stage and starts by itself once "
        "step 3 has succeeded"
    )


def test_a_step_of_a_busy_environment_says_which_release_holds_it(client, operator, plan):
    other = services.create_plan("2.8.6", commit=R, user=operator)
    StepRun.objects.filter(plan=other, number=2).update(state="running")
    client.force_login(operator)
    html = client.get(url("change", plan)).content.decode()
    assert _launch_controls(html) == []
    assert "DEV is busy with 2.8.6 step 2 (running)" in _text(_row(html, 2))
    assert _next(html) == "Launch stage DEV — steps 2–4"  # named, not linked: it cannot start yet
    assert "It cannot start yet" in _text(html)


def test_a_complete_release_has_an_empty_next_action(client, operator, plan_at):
    plan = plan_at(15)
    client.force_login(operator)
    html = client.get(url("change", plan)).content.decode()
    assert "<span data-next></span>" in html
    assert "release 2.8.5 is complete" in html
    assert guidance.next_action(plan).kind == "done"


def test_a_paused_step_with_failed_sites_names_the_retry(operator, plan_at):
    plan = plan_at(3)
    step = StepRun.objects.get(plan=plan, number=3)
    StepRun.objects.filter(pk=step.pk).update(state="paused", message="threshold reached")
    step.sites.create(site_id="s1", path="p1", state="failed")
    action = guidance.next_action(plan)
    assert action.kind == "retry" and action.text.startswith("Retry the failed sites of step 3 on DEV (1)")
    assert action.command == "release retry-failed 2.8.5 --step 3 --user NAME"


def test_the_commands_next_action_is_a_command(plan):
    assert guidance.next_command(plan) == "Next: release launch 2.8.5 --stage DEV --user NAME"
    mark_done(plan, 2, 3, 4, 5, 6)
    assert guidance.next_command(plan) == "Next: release finalize 2.8.5 --tag TAG --commit SHA --user NAME"


# -- the confirmation states a refusal first --------------------------------------------------------


def test_a_blocked_prod_stage_is_refused_before_anything_is_typed(client, operator, plan, simulator):
    configure_environments({"PROD": simulator.of("PROD", sites=120)})
    client.force_login(operator)
    response = client.get(url("launch", plan, 12, query="?stage=1"))
    html = response.content.decode()
    assert response.status_code == 200
    refusal = _text(html.split('id="launch-refusal">')[1].split("</p>")[0])
    title = StepRun.objects.get(plan=plan, number=2).title
    assert refusal == f"step 12 cannot start: step 2 ({title}) is pending, and steps 3–11 are not done either"
    assert html.index('id="launch-refusal"') < html.index('id="blast-radius"')  # stated first
    assert 'name="confirm_environment"' not in html and "Yes," not in html
    assert "Next on this release: Launch stage DEV — steps 2–4" in _text(html)
    # A POST anyway (an old form) is refused as such, audited, whatever was typed.
    token = client.get(url("launch", plan, 12)).context["token"]
    response = client.post(url("launch", plan, 12), {"confirmed": token, "confirm_environment": "PROD"})
    assert "step 12 cannot start" in response.content.decode()
    assert StepRun.objects.get(plan=plan, number=12).state == "pending"
    event = AuditEvent.objects.get(action="launch", outcome="refused")
    assert event.message.startswith("step 12 cannot start")


def test_a_succeeded_steps_confirmation_says_so_and_offers_no_yes(client, operator, plan_at, dev):
    plan = plan_at(3)
    client.force_login(operator)
    html = client.get(url("launch", plan, 2)).content.decode()
    assert "step 2 is no longer launchable (it is succeeded): nothing is left to launch there" in _text(html)
    assert 'id="launch-form"' not in html and "Yes," not in html


def test_the_launch_message_ends_with_the_next_action(client, operator, plan, dev):
    client.force_login(operator)
    _, response = confirm_launch(client, plan, 2, stage=True)
    (message,) = messages_of(response)
    assert message[1].startswith("Launched stage DEV from step 2")
    assert message[1].endswith(
        "Next: wait for step 2 to finish (the plan page updates itself); then launch stage TEST — steps 5–6."
    )


def test_long_path_lists_fold_after_the_first_few(client, operator, plan, simulator):
    configure_environments({"PROD": simulator.of("PROD", sites=400)})
    mark_done(plan, *range(2, 14))
    client.force_login(operator)
    response = client.get(url("launch", plan, 14))
    batch = max(response.context["radius"]["previews"][0]["batches"], key=lambda b: b["count"])
    assert batch["count"] > 5
    html = response.content.decode()
    index = [b["name"] for b in response.context["radius"]["previews"][0]["batches"]].index(batch["name"])
    cell = html.split('class="batch-paths">')[index + 1].split("</td>")[0]
    shown = cell.split("<details")[0]
    assert shown.count(",") == 4  # five paths
    assert f"<summary>and {batch['count'] - 5} more</summary>" in cell


def test_the_missing_item_note_appears_only_where_an_earlier_step_creates_it(client, operator, plan, dev):
    client.force_login(operator)
    stage = client.get(url("launch", plan, 2, query="?stage=1")).context["radius"]["previews"]
    notes = {p["number"]: p.get("note") for p in stage}
    assert notes[3].startswith("step 2 creates the release's code item first") and notes[4] == notes[3]
    alone = client.get(url("launch", plan, 3)).context["radius"]["previews"]
    assert not alone[0].get("note")
