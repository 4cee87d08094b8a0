"""The API's views: `plans` (list, create, status, previews, the step to poll), `operations`
(launch, approve, pause, resume, abort, retry, skip, finalize, rollback), `environments` and
`audit`. Each calls the same `releases.services` functions as the admin and the shell."""
