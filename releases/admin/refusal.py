"""The refusal page: what a user without the needed permission sees instead of an operation's page
(before anything is read from Atlas), rather than a bare 403."""

from django.template.response import TemplateResponse


def refusal_page(model_admin, request, *, title: str, reason: str, back_url: str):
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "reason": reason,
        "back_url": back_url,
        "opts": model_admin.opts,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/releases/releaseplan/refusal.html", context, status=403)
