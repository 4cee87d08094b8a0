"""`/api/v1/…` (see PRODUCT.md, "HTTP API")."""

from django.urls import path

from .views import audit, environments, operations, plans

app_name = "api"

PLAN = "plans/<str:version>/"
STEP = PLAN + "steps/<int:number>/"

urlpatterns = [
    path("plans/", plans.PlanList.as_view(), name="plans"),
    path(PLAN, plans.PlanDetail.as_view(), name="plan"),
    path(PLAN + "preview/", plans.PlanPreview.as_view(), name="preview"),
    path(PLAN + "launch/", operations.Launch.as_view(), name="launch"),
    path(PLAN + "approve/", operations.Approve.as_view(), name="approve"),
    path(PLAN + "withdraw/", operations.Withdraw.as_view(), name="withdraw"),
    path(PLAN + "pause/", operations.Pause.as_view(), name="pause"),
    path(PLAN + "resume/", operations.Resume.as_view(), name="resume"),
    path(PLAN + "abort/", operations.Abort.as_view(), name="abort"),
    path(PLAN + "finalize/", operations.Finalize.as_view(), name="finalize"),
    path(STEP, plans.StepDetail.as_view(), name="step"),
    path(STEP + "preview/", plans.StepPreview.as_view(), name="step-preview"),
    path(STEP + "retry-failed/", operations.RetryFailed.as_view(), name="retry-failed"),
    path(STEP + "skip/", operations.Skip.as_view(), name="skip"),
    path(STEP + "rollback/", operations.Rollback.as_view(), name="rollback"),
    path("environments/", environments.EnvironmentList.as_view(), name="environments"),
    path("environments/<str:name>/", environments.EnvironmentDetail.as_view(), name="environment"),
    path("audit/", audit.AuditTrail.as_view(), name="audit"),
]
