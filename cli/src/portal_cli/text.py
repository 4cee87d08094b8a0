"""The API's documents as lines for a person: the same wording as `manage.py release`."""

from __future__ import annotations


def describe_preview(preview: dict) -> list[str]:
    env = preview.get("environment") or "-"
    lines = [f"Step {preview['number']} [{env}] {preview['title']} ({preview['kind']}, {preview['state']})"]
    if preview.get("manual"):
        return [*lines, f"  manual: {preview['detail']}"]
    if "code" in preview:
        lines += _code(preview)
    elif "batches" in preview:
        lines += _batches(preview)
    if preview.get("error"):
        lines.append(f"  could not preview: {preview['error']}")
    return lines


def _code(preview: dict) -> list[str]:
    code, action = preview["code"], preview.get("action")
    item = f"{code['name']} {code['version']} ({code['code_type']})"
    if action == "update":
        lines = [
            f"  update code item {code['id']} {item}: commit {code['current_commit']} -> {code['commit_hash']}",
            f"  make current: {'yes' if preview.get('make_current') else 'no'}; "
            f"sites on this item (Atlas updates them too): {preview.get('cascade_sites')}",
        ]
    elif action == "missing":
        lines = [f"  code item {item} does not exist yet"]
    else:
        lines = [
            f"  {action} code item {item} at commit {code['commit_hash']}, "
            f"current: {'yes' if code.get('is_current') else 'no'}"
        ]
    for clash in preview.get("commit_clash", []):
        lines.append(
            f"  warning: item {clash['id']} ({clash['name']} {clash['version']}) already uses that commit"
        )
    return lines


def _batches(preview: dict) -> list[str]:
    verb = "delete" if preview.get("action") == "delete_sites" else "update to the release profile"
    lines = [f"  {verb}: {preview['total']} site(s) in {len(preview['batches'])} batch(es)"]
    for batch in preview["batches"]:
        shown = ", ".join(batch["paths"])
        lines.append(f"    {batch['name']}: {batch['count']} site(s)" + (f": {shown}" if shown else ""))
        if batch["count"] - len(batch["paths"]) > 0:
            lines.append(f"      … and {batch['count'] - len(batch['paths'])} more")
    for group in preview.get("disabled", []):
        lines.append(f"    {group['name']}: disabled (skipped)")
    if preview.get("note"):
        lines.append(f"  note: {preview['note']}")
    return lines


def status_lines(status: dict) -> list[str]:
    lines = [
        f"Release {status['version']} ({status['profile']}): {status['state']}",
        f"  branch {status['release_branch']} at {status['release_commit']}"
        + (f"; final tag {status['final_tag']} at {status['final_commit']}" if status["final_tag"] else ""),
    ]
    for step in status["steps"]:
        lines.append(step_line(step))
        if step.get("message"):
            lines.append(f"      {step['message']}")
        if step.get("to_check"):
            lines.append(
                f"      CHECK IN ATLAS: {len(step['to_check'])} site(s) possibly lost their instance"
            )
            lines += [
                f"        {site['path'] or site['site_id']} ({site['site_id']})" for site in step["to_check"]
            ]
    for env, sites in status.get("sweeps", {}).items():
        lines.append(f"  {env}: {len(sites)} site(s) not on the release profile after the last update")
        lines += [
            f"      {site.get('path') or site.get('_id')} ({site.get('status')})" for site in sites[:20]
        ]
    return lines


def step_line(step: dict) -> str:
    counts = step["counts"]
    line = f"{step['number']:>3} {step['environment'] or '-':<5}{step['state']:<10} {step['title']}"
    if counts["targeted"]:
        updating = f", {counts['unverified']} updating at Atlas" if counts.get("unverified") else ""
        line += (
            f" [{counts['succeeded']}/{counts['targeted']} ok, {counts['failed']} failed, "
            f"{counts['skipped']} skipped, {counts['pending']} pending{updating}]"
        )
    if step.get("launched_by"):
        line += f" (by {step['launched_by']})"
    return line


def progress_line(step: dict) -> str:
    line = f"step {step['number']} [{step['environment'] or '-'}] {step['kind']}: {step['state']}"
    counts = step["counts"]
    if counts["targeted"]:
        line += (
            f" - {counts['succeeded']}/{counts['targeted']} succeeded, {counts['failed']} failed, "
            f"{counts['skipped']} skipped, {counts['pending']} pending"
        )
        if counts.get("unverified"):
            line += f", {counts['unverified']} updating at Atlas (not yet verified)"
    if step["state"] != "running" and step.get("message"):
        line += f" ({step['message']})"
    elif step["state"] == "running" and (step.get("liveness") or step.get("activity")):
        line += f" ({step.get('liveness') or step.get('activity')})"
    return line
