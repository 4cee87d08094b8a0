"""The refusal page: what a user without the needed permission sees instead of an operation's page
(before anything is read from Atlas), rather than a bare 403."""


def refusal_page(model_admin, request, *, title: str, reason: str, back_url: str):
    context = {"title": title, "reason": reason, "back_url": back_url}
    return model_admin.render(request, "admin/releases/releaseplan/refusal.html", context, status=403)
