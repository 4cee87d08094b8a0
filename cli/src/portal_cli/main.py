"""`portal SUBCOMMAND …`: each subcommand is one or two calls to the portal's API, printed as
`manage.py release` prints them (`--json`: the same documents)."""

from __future__ import annotations

import json
import os
import sys

from . import args, text
from .http import Portal, Refused, Usage, check_url
from .waiting import Waiter

REFUSED, USAGE, TIMED_OUT = 1, 2, 3


class Failed(Exception):
    def __init__(self, message: str, code: int = REFUSED):
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None, *, stdin=None, stdout=None, stderr=None) -> int:
    options = args.parser().parse_args(argv)  # exits 2 on bad usage
    command = Command(options, stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr)
    try:
        if getattr(options, "timeout", None) is not None and not options.wait:
            raise Usage("--timeout only applies with --wait")
        command.portal = Portal(
            check_url(options.url or os.environ.get("PORTAL_URL", ""), allow_http=options.allow_http),
            options.token or os.environ.get("PORTAL_TOKEN", ""),
        )
        getattr(command, "do_" + options.action.replace("-", "_"))()
    except Usage as exc:
        command.note(f"portal: {exc}")
        return USAGE
    except Refused as exc:
        command.note(f"portal: {exc}" + (f" [{exc.code}]" if exc.code else ""))
        return REFUSED
    except Failed as exc:
        command.note(f"portal: {exc}")
        return exc.code
    except KeyboardInterrupt:
        command.note("portal: interrupted (anything already started on the portal carries on)")
        return REFUSED
    return 0


class Command:
    def __init__(self, options, stdin, stdout, stderr):
        self.o, self.stdin, self.stdout, self.stderr = options, stdin, stdout, stderr
        self.portal: Portal

    # -- output -----------------------------------------------------------------------------------

    def note(self, line: str) -> None:
        print(line, file=self.stderr, flush=True)

    def out(self, line: str) -> None:
        print(line, file=self.stdout, flush=True)

    def emit(self, document) -> None:
        self.stdout.write(json.dumps(document, indent=2))
        self.stdout.flush()

    def ask(self, prompt: str) -> str:
        self.stderr.write(prompt)
        self.stderr.flush()
        return self.stdin.readline().strip()

    def require_terminal(self, what: str, review: str) -> None:
        if not (hasattr(self.stdin, "isatty") and self.stdin.isatty()):
            raise Failed(f"refusing to {what} without confirmation: stdin is not a terminal "
                         f"(review {review}, then pass --yes)")  # fmt: skip

    def plan(self, suffix: str = "") -> str:
        return f"plans/{self.o.version}/{suffix}"

    def done(self, document: dict, line: str) -> None:
        """A step operation's answer: its document with --json, else one line."""
        if self.o.json:
            return self.emit({k: document[k] for k in ("version", "action", "step")})
        step = document["step"]
        self.out(f"{document['version']} step {step['number']} [{step['environment'] or '-'}]: {line}")

    # -- subcommands ------------------------------------------------------------------------------

    def do_create(self):
        status = self.portal.post("plans/", {"version": self.o.version, "release_commit": self.o.commit,
                                             "branch": self.o.branch, "git_url": self.o.git_url,
                                             "profile": self.o.profile})  # fmt: skip
        if self.o.json:
            return self.emit(status)
        self.out(f"Created release {status['version']}: branch {status['release_branch']} at "
                 f"{status['release_commit']} (step 1 recorded). Next: portal launch {status['version']} --stage DEV")  # fmt: skip

    def do_preview(self):
        previews = self.portal.get(self.plan("preview/"), step=self.o.step)["previews"]
        if self.o.json:
            self.emit(previews)
        else:
            for preview in previews:
                self.out("\n".join(text.describe_preview(preview)))
        unread = [p for p in previews if p.get("error") and "action" not in p]
        if unread:
            numbers = ", ".join(str(p["number"]) for p in unread)
            reasons = "; ".join(dict.fromkeys(p["error"] for p in unread))
            raise Failed(f"could not preview step(s) {numbers}: {reasons}")

    def do_launch(self):
        target = {"step": self.o.step, "stage": self.o.stage, "next": True if self.o.next_step else None}
        body = {key: value for key, value in target.items() if value is not None}
        if self.o.yes:
            body.update(yes=True, confirm_environment=self.o.confirm_environment)
        else:
            self.require_terminal("launch", "`portal preview`")
            preview = self.portal.get(self.plan("launch/"), **body)
            if preview["refusal"]:
                raise Failed(preview["refusal"])
            body.update(
                confirmation=preview["confirmation"], confirm_environment=self.confirm_launch(preview)
            )
        document = self.portal.post(self.plan("launch/"), body)
        if self.approval_awaited(document, "launch"):
            return None
        if not self.o.wait:
            return self.launched(document)
        self.follow(document, "launch", chain=document.get("chain"))

    def confirm_launch(self, preview: dict) -> str:
        for step in preview["previews"]:
            for line in text.describe_preview(step):
                self.note(line)
        if preview["protected"]:
            self.note(f"{preview['environment']} is a protected environment.")
            typed = self.ask(f"Type {preview['environment']} to proceed: ")
            if typed != preview["environment"]:
                raise Failed("not confirmed: nothing was launched")
            return typed
        if self.ask("Proceed? [y/N] ").lower() not in ("y", "yes"):
            raise Failed("not confirmed: nothing was launched")
        return ""

    def launched(self, document: dict) -> None:
        if self.o.json:
            return self.emit({k: document[k] for k in ("version", "action", "step")})
        step = document["step"]
        what = (
            f"stage {self.o.stage} from step {step['number']}" if self.o.stage else f"step {step['number']}"
        )
        task = step["task_ids"][-1] if step["task_ids"] else "-"
        self.out(f"Launched {document['version']} {what} [{step['environment']}] {step['title']}: "
                 f"{step['state']}, task {task}")  # fmt: skip

    def approval_awaited(self, document: dict, action: str) -> bool:
        """After an operation the two-person rule may have made a request: without --wait, say so
        (True: done); with --wait, wait for the decision (raising unless approved)."""
        request = document.get("request")
        if not request or request["state"] != "pending":
            return False
        if not self.o.wait:
            self.done(document, f"{request['action'].replace('_', ' ')} requested (#{request['id']}): another "
                      "user must approve it")  # fmt: skip
            return True
        number = document["step"]["number"]
        decided = self.waiter().approval(number, request["id"])
        if decided == "timeout":
            raise Failed(f"timed out after {self.o.timeout:g}s waiting for the approval of step {number} "
                         "(the request stays open)", TIMED_OUT)  # fmt: skip
        if decided != "approved":
            raise Failed(f"step {number} was not approved ({decided})")
        return False

    def waiter(self) -> Waiter:
        if not hasattr(self, "_waiter"):
            get = lambda n: self.portal.get(self.plan(f"steps/{n}/"))  # noqa: E731
            self._waiter = Waiter(get_step=get, report=self.note, timeout=self.o.timeout)
            self._waiter.start()
        return self._waiter

    def follow(self, document: dict, action: str, chain=None) -> None:
        result = self.waiter().follow(document["step"]["number"], chain=chain)
        if self.o.json:
            self.emit({"version": self.o.version, "action": action, "succeeded": result.succeeded,
                       "state": result.steps[-1]["state"] if result.steps else "running",
                       "steps": result.steps})  # fmt: skip
        if not result.succeeded:
            raise Failed(result.message, TIMED_OUT if result.timed_out else REFUSED)
        if not self.o.json:
            numbers = ", ".join(str(s["number"]) for s in result.steps)
            self.out(f"{self.o.version}: step(s) {numbers} succeeded")

    def do_finalize(self):
        document = self.portal.post(self.plan("finalize/"), {"tag": self.o.tag, "commit": self.o.commit})
        if self.o.json:
            return self.emit({k: document[k] for k in ("version", "action", "step")})
        self.out(
            f"Finalized {self.o.version}: tag {self.o.tag} at {self.o.commit}; steps 8–14 deploy this commit."
        )

    def do_pause(self):
        self.done(
            self.portal.post(self.plan("pause/")), "pause requested: the step stops after the sites in flight"
        )

    def do_abort(self):
        document = self.portal.post(self.plan("abort/"))
        aborted = document["step"]["state"] == "aborted"
        self.done(
            document, "aborted" if aborted else "abort requested: the step stops after the sites in flight"
        )

    def do_resume(self):
        return self.send_again("resume/", "resume", "resumed")

    def do_retry_failed(self):
        return self.send_again(
            f"steps/{self.o.step}/retry-failed/", "retry-failed", "retrying its failed sites"
        )

    def send_again(self, url: str, action: str, text: str):
        """resume and retry-failed, which send writes again: a request on a two-person environment,
        else followed with --wait or said done."""
        document = self.portal.post(self.plan(url))
        if self.approval_awaited(document, action):
            return None
        if self.o.wait:
            return self.follow(document, action)
        self.done(document, text)

    def do_skip(self):
        document = self.portal.post(self.plan(f"steps/{self.o.step}/skip/"), {"reason": self.o.reason})
        self.done(document, f"skipped ({self.o.reason})")

    def do_approve(self):
        request = self.o.request
        if request is None:
            request = self.ask_approval()
        document = self.portal.post(self.plan("approve/"), {"step": self.o.step, "request": request})
        self.done(document, f"approved request #{request}: {document['step']['state']}")

    def ask_approval(self) -> int:
        waiting = self.portal.get(self.plan(f"steps/{self.o.step}/")).get("request")
        if not waiting or waiting["state"] != "pending":
            raise Failed(f"step {self.o.step} has nothing waiting for approval")
        if not (hasattr(self.stdin, "isatty") and self.stdin.isatty()):
            raise Failed(f"{waiting['description']}\nrefusing to approve without seeing it: stdin is not a "
                         f"terminal (pass --request {waiting['id']} to approve this request)")  # fmt: skip
        self.note(waiting["description"])
        if self.ask(f"Approve request #{waiting['id']}? [y/N] ").lower() not in ("y", "yes"):
            raise Failed("not approved: nothing was changed")
        return waiting["id"]

    def do_withdraw(self):
        body = {"step": self.o.step} | ({"request": self.o.request} if self.o.request else {})
        document = self.portal.post(self.plan("withdraw/"), body)
        self.done(document, "request withdrawn")

    def do_rollback(self):
        path = self.plan(f"steps/{self.o.step}/rollback/")
        chosen = {"failed": True} if self.o.failed else {"sites": self.o.sites}
        query = {"failed": "true"} if self.o.failed else {"sites": ",".join(self.o.sites)}
        prepared = self.portal.get(path, **query)
        body = {
            **chosen,
            "confirm": prepared["confirmation"],
            "confirm_environment": self.o.confirm_environment,
        }
        if not self.o.yes:
            self.require_terminal("roll back", "the step's failed sites")
            body.update(self.confirm_rollback(prepared))
        document = self.portal.post(path, body)
        if self.approval_awaited(document, "rollback"):
            return None
        if not self.o.wait:
            return self.done(document, f"rolling back {len(prepared['sites'])} sites")
        self.follow(document, "rollback")

    def confirm_rollback(self, prepared: dict) -> dict:
        for line in prepared["lines"]:
            self.note(line)
        answers = {"confirm_environment": "", "confirm": ""}
        if prepared["protected"]:
            answers["confirm_environment"] = self.ask(f"Type {prepared['environment']} to proceed: ")
            if answers["confirm_environment"] != prepared["environment"]:
                raise Failed("not confirmed: nothing was rolled back")
        elif not prepared["database"] and self.ask("Proceed? [y/N] ").lower() not in ("y", "yes"):
            raise Failed("not confirmed: nothing was rolled back")
        if prepared["database"]:
            answers["confirm"] = self.ask(f"Type {prepared['confirmation']} to roll back the code only: ")
        return answers

    def do_status(self):
        status = self.portal.get(self.plan())
        if self.o.json:
            return self.emit(status)
        for line in text.status_lines(status):
            self.out(line)

    def do_list(self):
        rows = [{k: row[k] for k in ("version", "state", "created_by", "created_at", "final_tag")}
                for row in self.portal.pages("plans/")]  # fmt: skip
        if self.o.json:
            return self.emit(rows)
        if not rows:
            self.out("No release plans yet: portal create VERSION --commit SHA")
        for row in rows:
            self.out(f"{row['version']:<12} {row['state']:<10} by {row['created_by']} at {row['created_at']}")

    def do_environment(self):
        if self.o.environment_action == "show":
            name = self.o.name
            documents = (
                [self.portal.get(f"environments/{name}/")] if name else self.portal.get("environments/")
            )
            if self.o.json:
                return self.emit(documents[0] if name else documents)
            for document in documents:
                self.out(document["name"])
                for key, value in document.items():
                    if key != "name":
                        self.out(f"  {key}: {'' if value is None else value}")
            return None
        requested = {o.replace("-", "_"): getattr(self.o, o.replace("-", "_")) for o in args.SETTINGS}
        requested = {key: value for key, value in requested.items() if value is not None}
        if not requested:
            raise Failed("nothing to change: give at least one setting")
        answer = self.portal.patch(f"environments/{self.o.name}/", requested)
        if self.o.json:
            return self.emit(answer)
        if not answer["changes"]:
            return self.out(f"{answer['name']}: no change")
        for field, (old, new) in answer["changes"].items():
            self.out(f"{answer['name']} {field}: {old} -> {new}")
