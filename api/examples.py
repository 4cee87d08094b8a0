"""Examples shown in the OpenAPI schema. They are real responses, trimmed to one step:
tests/api/test_schema.py checks that each has the keys a real response of its endpoint has."""

from drf_spectacular.utils import OpenApiExample

_COUNTS = {
    "targeted": 2,
    "succeeded": 2,
    "failed": 0,
    "skipped": 0,
    "pending": 0,
    "unverified": 0,
    "rolled_back": 0,
}
_STEP = {
    "number": 4,
    "environment": "DEV",
    "kind": "update_sites",
    "title": "Update webcentral and homepage on DEV",
    "state": "succeeded",
    "message": "",
    "launched_by": "ops-lead",
    "started_at": "2026-05-04T10:00:03+00:00",
    "finished_at": "2026-05-04T10:00:41+00:00",
    "counts": _COUNTS,
    "task_ids": ["0b4c4f7e-4c1e-4a59-9d0e-3f7c2a1d9b11"],
    "activity": None,
    "liveness": None,
    "to_check": [],
}
STATUS_VALUE = {
    "version": "2.8.5",
    "state": "running",
    "profile": "express",
    "release_branch": "release/2.8.5",
    "release_commit": "0123456789abcdef0123456789abcdef01234567",
    "final_tag": None,
    "final_commit": None,
    "created_by": "ops-lead",
    "steps": [_STEP],
    "sweeps": {},
    "durations": {},
}
STEP_VALUE = {
    "version": "2.8.5",
    "action": "status",
    "step": _STEP,
    "url": "https://portal.example.edu/api/v1/plans/2.8.5/steps/4/",
    "request": None,
}
LAUNCHED_VALUE = {
    **STEP_VALUE,
    "action": "launch",
    "step": {**_STEP, "state": "running", "finished_at": None},
    "chain": [2, 3, 4],
}
LAUNCH_PREVIEW_VALUE = {
    "version": "2.8.5",
    "step": 2,
    "stage": True,
    "environment": "DEV",
    "protected": False,
    "two_person": False,
    "chain": [2, 3, 4],
    "previews": [],
    "deletions": 0,
    "updates": 2,
    "total": 2,
    "refusal": "",
    "confirmation": "eyJwbGFuIjoxLCJzdGVwIjoyLCJzdGFnZSI6dHJ1ZX0:1uAbCd:signature",
}
ERROR_VALUE = {"code": "launch_refused", "detail": "step 12 cannot start: step 7 (Finalize) is pending"}

STATUS = OpenApiExample("A release running on DEV", value=STATUS_VALUE, response_only=True)
STEP = OpenApiExample("A step that succeeded", value=STEP_VALUE, response_only=True)
LAUNCHED = OpenApiExample(
    "The DEV stage launched", value=LAUNCHED_VALUE, response_only=True, status_codes=["202"]
)
LAUNCH_PREVIEW = OpenApiExample("The DEV stage's preview", value=LAUNCH_PREVIEW_VALUE, response_only=True)
ERROR = OpenApiExample("A refusal", value=ERROR_VALUE, response_only=True, status_codes=["409"])
