"""Issue 8, the audit trail in the admin: filters, times to the second, and the streamed CSV export
(flat memory over 100,000 rows, fixed columns, permission)."""

import csv
import io
import tracemalloc
from datetime import datetime

import pytest
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone

from releases.admin.audit import CSV_COLUMNS
from releases.models import AuditEvent
from tests.support import make_user

pytestmark = pytest.mark.django_db

EXPORT = "admin:releases_auditevent_export"
CHANGELIST = "admin:releases_auditevent_changelist"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def auditor():
    return make_user("auditor", permissions=("view_auditevent",))


def _bulk_events(total: int, chunk: int = 10_000) -> None:
    """Rows as tests may create them: the trail is append-only (no update/delete), inserts are fine."""
    for start in range(0, total, chunk):
        AuditEvent.objects.bulk_create(
            (
                AuditEvent(
                    username=f"user-{i % 7}",
                    action="launch" if i % 2 else "pause",
                    environment_name="PROD",
                    plan_version="2.8.5",
                    step_number=14,
                    parameters={"i": i, "note": "x" * 40},
                    message=f"event {i}",
                )
                for i in range(start, min(start + chunk, total))
            ),
            batch_size=2000,
        )


@pytest.mark.slow
def test_csv_export_streams_100000_rows_with_flat_memory(client, auditor):
    _bulk_events(100_000)
    client.force_login(auditor)

    response = client.get(reverse(EXPORT))

    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("text/csv")
    tracemalloc.start()
    try:
        lines = 0
        for chunk in response.streaming_content:
            lines += chunk.count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == 100_001  # the header and every row: no limit
    print(f"streaming peak {peak / 2**20:.1f} MiB")
    assert peak < 30 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while streaming"


def test_csv_export_has_the_documented_columns(client, auditor):
    event = AuditEvent.record(
        "skip", username="ops-lead", parameters={"changes": {"position": [2, 1]}}, reason="not needed"
    )
    client.force_login(auditor)

    content = b"".join(client.get(reverse(EXPORT)).streaming_content).decode()

    header, row = list(csv.reader(io.StringIO(content)))
    assert header == CSV_COLUMNS == [
        "id", "at", "username", "action", "outcome", "release", "step", "environment", "reason",
        "message", "parameters", "channel", "account",
    ]  # fmt: skip
    values = dict(zip(header, row, strict=True))
    assert values["id"] == str(event.pk)
    assert values["at"] == timezone.localtime(event.at).isoformat(timespec="seconds")
    assert (values["username"], values["action"], values["outcome"]) == ("ops-lead", "skip", "ok")
    assert (values["reason"], values["step"], values["release"]) == ("not needed", "", "")
    assert values["parameters"] == '{"changes": {"position": [2, 1]}}'
    assert (values["channel"], values["account"]) == ("system", "")


def test_csv_export_defuses_spreadsheet_formulas(client, auditor):
    AuditEvent.record("skip", username="ops-lead", reason='=HYPERLINK("http://evil")')
    client.force_login(auditor)

    content = b"".join(client.get(reverse(EXPORT)).streaming_content).decode()

    (row,) = csv.DictReader(io.StringIO(content))
    assert row["reason"] == """'=HYPERLINK("http://evil")"""


def test_csv_export_applies_the_changelist_filters(client, auditor):
    _bulk_events(30)
    client.force_login(auditor)

    content = b"".join(client.get(reverse(EXPORT) + "?username=user-3&action=launch").streaming_content)

    rows = list(csv.DictReader(io.StringIO(content.decode())))
    expected = AuditEvent.objects.filter(username="user-3", action="launch").count()
    assert len(rows) == expected > 0
    assert {(r["username"], r["action"]) for r in rows} == {("user-3", "launch")}


def test_csv_export_needs_the_view_permission(client, auditor):
    outsider = make_user("outsider", permissions=("view_releaseplan",))
    client.force_login(outsider)
    assert client.get(reverse(EXPORT)).status_code == 403
    client.force_login(auditor)
    assert client.get(reverse(EXPORT)).status_code == 200


def test_audit_changelist_filters_and_shows_times_to_the_second(client, auditor):
    _bulk_events(20)
    AuditEvent.record("finalize", username="ops-lead", message="tagged")
    event = AuditEvent.objects.get(action="finalize")
    client.force_login(auditor)

    page = client.get(reverse(CHANGELIST) + "?username=ops-lead").content.decode()

    assert timezone.localtime(event.at).strftime("%Y-%m-%d %H:%M:%S") in page
    assert "tagged" in page and "event 3" not in page
    assert reverse(EXPORT) + "?username=ops-lead" in page  # the export keeps the filters
    for query in ("outcome=ok", "environment_name=PROD", "plan_version=2.8.5", "action=launch"):
        assert client.get(reverse(CHANGELIST) + "?" + query).status_code == 200
    today = timezone.localdate()
    dated = client.get(
        reverse(CHANGELIST) + f"?at__year={today.year}&at__month={today.month}&at__day={today.day}"
    )
    assert "tagged" in dated.content.decode()
    yesterday = datetime(2000, 1, 1)
    old = client.get(reverse(CHANGELIST) + f"?at__year={yesterday.year}").content.decode()
    assert "tagged" not in old


def test_audit_changelist_queries_are_bounded(client, auditor, django_assert_max_num_queries):
    _bulk_events(2_000)
    client.force_login(auditor)
    with django_assert_max_num_queries(14):
        response = client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert "event 1999" in response.content.decode()


def test_audit_events_cannot_be_added_in_the_admin(admin_client):
    assert admin_client.get(reverse("admin:releases_auditevent_add")).status_code == 403
