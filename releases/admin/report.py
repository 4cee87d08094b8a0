"""A plan's release report page (`admin/releases/releaseplan/<id>/report/`): the timeline across
the environments, durations per step and per batch, sites updated over time per environment as an
inline SVG chart (nothing loaded from elsewhere), failures and sweeps. The figures come from
`reports.release_report`, the same functions `release status --json` uses for its durations."""

from datetime import datetime

from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from .. import reports

COLORS = {"DEV": "#1565c0", "TEST": "#b26a00", "PROD": "#2e7d32"}
WIDTH, HEIGHT, LEFT, TOP, BOTTOM = 720, 220, 60, 12, 28  # the charts' frame, in SVG units


def human(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def shown(value: str | None) -> str:
    """An ISO timestamp of the report as the page shows it: local time, to the second."""
    return timezone.localtime(_time(value)).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def timeline(durations: dict) -> dict:
    """Each step that ran as a bar on one time axis (the release's first start to its last end)."""
    start, end = _time(durations["started_at"]), _time(durations["finished_at"])
    ran = [s for s in durations["steps"] if s["started_at"]]
    if not start or not ran:
        return {"bars": [], "height": 0}
    last = max([end or start, *(_time(s["finished_at"]) or end or start for s in ran)])
    span = max((last - start).total_seconds(), 1.0)
    plot = WIDTH - LEFT - 10
    bars = []
    for row, step in enumerate(ran):
        begin = (_time(step["started_at"]) - start).total_seconds()
        length = step["duration_seconds"] or 0.0
        bars.append(
            {
                "number": step["number"],
                "environment": step["environment"] or "",
                "x": round(LEFT + plot * begin / span, 1),
                "y": TOP + row * 18,
                "width": round(max(plot * length / span, 2.0), 1),
                "color": COLORS.get(step["environment"], "#555"),
                "label": f"step {step['number']} {step['environment'] or ''}: {human(length)}",
            }
        )
    return {"bars": bars, "height": TOP + len(bars) * 18 + 8, "span": human(span), "left": LEFT}


def chart(updates: dict) -> dict:
    """Cumulative sites updated per environment over time, as SVG polylines (numbers only)."""
    series = updates.get("series", {})
    points = [(_time(p["at"]), p["sites"]) for rows in series.values() for p in rows]
    if not points:
        return {"lines": []}
    first = min(t for t, _ in points)
    last = max(t for t, _ in points)
    span = max((last - first).total_seconds(), 1.0)
    totals = {env: sum(p["sites"] for p in rows) for env, rows in series.items()}
    top = max(totals.values())
    plot_w, plot_h = WIDTH - LEFT - 10, HEIGHT - TOP - BOTTOM
    lines = []
    for env, rows in sorted(series.items()):
        done, coords = 0, []
        for point in rows:
            x = LEFT + plot_w * (_time(point["at"]) - first).total_seconds() / span
            coords.append(f"{x:.1f},{TOP + plot_h * (1 - done / top):.1f}")
            done += point["sites"]
            coords.append(f"{x:.1f},{TOP + plot_h * (1 - done / top):.1f}")
        lines.append({"environment": env, "points": " ".join(coords), "color": COLORS.get(env, "#555"),
                      "total": totals[env]})  # fmt: skip
    return {
        "lines": lines,
        "max": top,
        "first": first,
        "last": last,
        "bucket": updates["bucket"],
        "axis_y": HEIGHT - BOTTOM,
        "left": LEFT,
        "right": WIDTH - 10,
        "top": TOP,
    }


class ReleaseReportMixin:
    """Adds the report page to the plan admin (its `get_urls`)."""

    report_template = "admin/releases/releaseplan_report.html"

    def get_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}_report"
        report = path("<path:object_id>/report/", self.admin_site.admin_view(self.report_view), name=name)
        return [report, *super().get_urls()]

    def report_view(self, request, object_id):
        plan = self.get_object(request, unquote(object_id))
        if plan is None:
            raise Http404("no such release plan")
        if not self.has_view_permission(request, plan):
            raise PermissionDenied
        report = reports.release_report(plan)
        durations = report["durations"]
        rows = [*durations["environments"].values(), *durations["steps"]]
        rows += [batch for step in durations["steps"] for batch in step["batches"]]
        for row in rows:  # what the page shows beside the figures (the JSON keeps ISO and seconds)
            row.update(human=human(row["duration_seconds"]), start=shown(row["started_at"]),
                       end=shown(row["finished_at"]))  # fmt: skip
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": plan,
            "title": f"Release {plan.version}: report",
            "report": report,
            "total": human(durations["total_seconds"]),
            "started": shown(durations["started_at"]),
            "finished": shown(durations["finished_at"]),
            "timeline": timeline(durations),
            "chart": chart(report["updates"]),
            "width": WIDTH,
            "height": HEIGHT,
        }
        return TemplateResponse(request, self.report_template, context)
