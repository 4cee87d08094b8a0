from .approval import LaunchRequest
from .audit import AuditEvent
from .environment import Environment, EnvironmentMisconfigured, UpdateGroup
from .plan import ReleasePlan, SiteResult, StepRun, TransitionRefused

__all__ = [
    "AuditEvent",
    "Environment",
    "EnvironmentMisconfigured",
    "LaunchRequest",
    "ReleasePlan",
    "SiteResult",
    "StepRun",
    "TransitionRefused",
    "UpdateGroup",
]
