"""Branding and the index order of the default admin site: the portal is the admin.

Set on `admin.site` itself (not a custom AdminSite class) so settings stay untouched."""

from types import MethodType

from django.contrib import admin
from django.urls import reverse_lazy

admin.site.site_header = "Express Release Portal"
admin.site.site_title = "Express Release Portal"
admin.site.index_title = "Releases"
# "View site" goes to the plan list, not back to the admin index.
admin.site.site_url = reverse_lazy("admin:releases_releaseplan_changelist")

_default_app_list = admin.site.get_app_list
# Releases first on the index, plans first within it: that is where release managers work.
_MODEL_ORDER = (
    "ReleasePlan",
    "StepRun",
    "LaunchRequest",
    "SiteResult",
    "AuditEvent",
    "Environment",
    "UpdateGroup",
)


def _get_app_list(self, request, app_label=None):
    apps = _default_app_list(request, app_label)
    apps.sort(key=lambda app: app["app_label"] != "releases")
    for app in apps:
        if app["app_label"] == "releases":
            order = {name: i for i, name in enumerate(_MODEL_ORDER)}
            app["models"].sort(key=lambda m: order.get(m["object_name"], len(order)))
    return apps


admin.site.get_app_list = MethodType(_get_app_list, admin.site)
