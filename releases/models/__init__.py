from .approval import LaunchRequest
from .audit import AuditEvent
from .environment import Environment, EnvironmentMisconfigured, InvalidGroupSelector, UpdateGroup
from .plan import ReleasePlan
from .sites import SiteResult
from .steps import StepRun, TransitionRefused

__all__ = [
    "AuditEvent",
    "Environment",
    "EnvironmentMisconfigured",
    "LaunchRequest",
    "InvalidGroupSelector",
    "ReleasePlan",
    "SiteResult",
    "StepRun",
    "TransitionRefused",
    "UpdateGroup",
]
