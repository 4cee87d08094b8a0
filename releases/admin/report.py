"""A plan's release report page (`admin/releases/releaseplan/<id>/report/`): the timeline across
the environments, durations per step and per batch, sites updated over time per environment as an
inline SVG chart (nothing loaded from elsewhere), verification (PATCH to verified per batch, and
each update step's queue of sites updating over time, as charts), failures and sweeps. The figures
come from `reports.release_report`, the same functions `release status --json` uses for its
durations; this module only shapes them for the page (rounding, coordinates)."""

from datetime import datetime
from functools import partial

from django.utils import timezone

from .. import progress, reports
from .pages import PlanPages

COLORS = {"DEV": "#1565c0", "TEST": "#e65100", "PROD": "#2e7d32"}
PALETTE = ("#6a1b9a", "#00838f", "#ad1457", "#5d4037")  # for environments with other names
# The charts' frame, in SVG units; drawn at the page's full width (the SVG scales to it).
WIDTH, HEIGHT, LEFT, TOP, BOTTOM = 1200, 240, 60, 12, 28
QUEUE_HEIGHT = 150
INSET = 6  # the first moment is drawn this far right of the y axis, so a line starting there shows


# Durations as the plan and step pages show them; an unknown one is a dash in the report's tables.
human = partial(progress.human, unknown="—")


def color(environment: str | None) -> str:
    if environment in COLORS:
        return COLORS[environment]
    return PALETTE[sum(map(ord, environment or "")) % len(PALETTE)]


def rate(per_minute: float | None) -> str:
    """Sites per minute as read: whole numbers (thousands grouped) from 10 up, one decimal below."""
    if per_minute is None:
        return "—"
    return f"{per_minute:,.0f}" if per_minute >= 10 else f"{per_minute:.1f}"


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
                "color": color(step["environment"]),
                "label": f"step {step['number']} {step['environment'] or ''}: {human(length)}",
            }
        )
    return {"bars": bars, "height": TOP + len(bars) * 18 + 8, "span": human(span), "left": LEFT}


def chart(updates: dict) -> dict:
    """Sites updated per environment over time, as SVG polylines (numbers only), on one time axis.
    Each line climbs to its own environment's total, so DEV's few sites show as plainly as PROD's
    thousands; a dot marks each line's end, so a burst of a second on an axis of hours shows too."""
    series = updates.get("series", {})
    points = [(_time(p["at"]), p["sites"]) for rows in series.values() for p in rows]
    if not points:
        return {"lines": []}
    first = min(t for t, _ in points)
    last = max(t for t, _ in points)
    x = _axis(first, last, LEFT, WIDTH - 10)
    plot_h = HEIGHT - TOP - BOTTOM
    lines = []
    for env, rows in sorted(series.items()):
        total = sum(p["sites"] for p in rows)
        done, coords = 0, []
        for point in rows:
            at = x(_time(point["at"]))
            coords.append(f"{at:.1f},{TOP + plot_h * (1 - done / total):.1f}")
            done += point["sites"]
            coords.append(f"{at:.1f},{TOP + plot_h * (1 - done / total):.1f}")
        end_x, end_y = coords[-1].split(",")
        lines.append({"environment": env, "points": " ".join(coords), "color": color(env), "total": total,
                      "end_x": end_x, "end_y": end_y})  # fmt: skip
    return {"lines": lines, "first": first, "last": last, "bucket": updates["bucket"], **_frame(HEIGHT)}


def _axis(first: datetime, last: datetime, left: float, right: float):
    """x of a moment between `first` and `last` (a span of at least a second)."""
    span = max((last - first).total_seconds(), 1.0)
    width = right - left - INSET
    return lambda at: left + INSET + width * (at - first).total_seconds() / span


def _frame(height: int) -> dict:
    return {"axis_y": height - BOTTOM, "left": LEFT, "right": WIDTH - 10, "top": TOP, "height": height}


def queue_chart(step: dict) -> dict:
    """One update step's sites updating at Atlas over time (`report_verification`), as a step
    line, with its environment's limit (max_unverified) as a dashed line."""
    points = [(_time(p["at"]), p["sites"]) for p in step["queue"]]
    top = max(step["queue_max"], step["limit"] or 0, 1)
    x = _axis(points[0][0], points[-1][0], LEFT, WIDTH - 10)
    plot_h = QUEUE_HEIGHT - TOP - BOTTOM

    def y(depth: int) -> float:
        return TOP + plot_h * (1 - depth / top)

    coords, previous = [], 0
    for at, depth in points:
        coords += [f"{x(at):.1f},{y(previous):.1f}", f"{x(at):.1f},{y(depth):.1f}"]
        previous = depth
    limit_y = round(y(step["limit"]), 1) if step["limit"] else None
    return {"points": " ".join(coords), "color": color(step["environment"]), "top": top, "limit_y": limit_y,
            "first": points[0][0], "last": points[-1][0], "frame": _frame(QUEUE_HEIGHT)}  # fmt: skip


class ReleaseReportMixin(PlanPages):
    """Adds the report page to the plan admin (its `get_urls`)."""

    report_template = "admin/releases/releaseplan/report.html"

    def get_urls(self):
        return [self.plan_path("report/", self.report_view, "report"), *super().get_urls()]

    def report_view(self, request, object_id):
        plan = self.get_viewable_plan(request, object_id)
        report = reports.release_report(plan)
        durations = report["durations"]
        rows = [*durations["environments"].values(), *durations["steps"]]
        rows += [batch for step in durations["steps"] for batch in step["batches"]]
        for row in rows:  # what the page shows beside the figures (the JSON keeps ISO and seconds)
            row.update(human=human(row["duration_seconds"]), start=shown(row["started_at"]),
                       end=shown(row["finished_at"]), rate=rate(row.get("sites_per_minute")))  # fmt: skip
        for step in report["verification"]:
            step["chart"] = queue_chart(step)
            for batch in step["batches"]:
                batch.update(median=human(batch["median_seconds"]), longest=human(batch["max_seconds"]))
        context = {
            "title": f"Release {plan.version}: report",
            "report": report,
            "total": human(durations["total_seconds"]),
            "active": human(durations["active_seconds"]),
            "started": shown(durations["started_at"]),
            "finished": shown(durations["finished_at"]),
            "timeline": timeline(durations),
            "chart": chart(report["updates"]),
            "width": WIDTH,
        }
        return self.render(request, self.report_template, context, plan=plan)
