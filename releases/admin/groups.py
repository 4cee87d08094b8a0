"""Update groups: drag-and-drop ordering per environment and step (django-admin-sortable2, served
locally), selectors edited as JSON, the sites each selector matches now, and every add, edit and
reorder made by `releases.services.update_groups` (checked, audited, written to the row's history)."""

import json

from adminsortable2.admin import SortableAdminMixin
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.http import HttpResponseBadRequest, HttpResponseForbidden, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from .. import services
from ..matching import matching_counts
from ..models import AuditEvent, UpdateGroup
from ..services import update_groups

# The changelist's filters that select one environment and one step: only then can rows be dragged.
SCOPE_PARAMS = ("environment__id__exact", "step_number")


class SelectorField(forms.JSONField):
    """The selector as indented JSON, so an operator reads and edits it as Atlas receives it."""

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput) or value is None:
            return super().prepare_value(value)
        return json.dumps(value, indent=2, ensure_ascii=False)  # in the order it is sent


class UpdateGroupForm(forms.ModelForm):
    user = None  # set per request by UpdateGroupAdmin

    class Meta:
        model = UpdateGroup
        fields = ("environment", "step_number", "name", "status", "update_group", "where", "enabled")
        field_classes = {"where": SelectorField}
        widgets = {"where": forms.Textarea(attrs={"rows": 6, "cols": 70, "style": "font-family: monospace"})}

    def clean(self):
        cleaned = super().clean()
        if self.has_changed():
            adding = self.instance.pk is None
            environments = [cleaned.get("environment")]
            if not adding:
                environments.append(self.instance.environment)  # moving a group off PROD, too
            try:
                services.check_update_group_change(
                    self.user,
                    environments,
                    "add" if adding else "change",
                    parameters={
                        "object": str(self.instance) if not adding else "",
                        "fields": self.changed_data,
                    },
                )
            except services.ActionRefused as exc:
                raise forms.ValidationError(str(exc)) from None
        return cleaned


def _with_user(form_class, request):
    return type(form_class.__name__, (form_class,), {"user": request.user})


@admin.register(UpdateGroup)
class UpdateGroupAdmin(SortableAdminMixin, admin.ModelAdmin):
    """Every add, change, reorder and delete is audited; those on a protected environment need the
    protected permission (the selectors decide which PROD sites a step changes or deletes)."""

    form = UpdateGroupForm
    ordering = ["position"]  # the field sortable2 drags; the list itself is shown as below
    list_display = (
        "position",
        "env",
        "step",
        "position_shown",
        "name",
        "selector_display",
        "matching_sites",
        "enabled",
        "edited_display",
    )
    list_display_links = ("name",)
    list_filter = ("environment", "step_number", "enabled")
    list_select_related = ("environment",)
    list_editable = ("enabled",)
    readonly_fields = ("edited", "updated_by")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # sortable2 names its drag-handle column after the field ("position", a second number
        # beside "#"): it is a handle.
        self._reorder_.__func__.short_description = "drag"

    def get_ordering(self, request):
        return ["environment__order", "step_number", "position", "id"]

    class Media:
        # Renumbers the "#" column and says "saved" (or why not) after each drag.
        js = ("releases/reorder.js",)

    @admin.display(description="env", ordering="environment__order")
    def env(self, obj):
        return obj.environment.name

    @admin.display(description="step", ordering="step_number")
    def step(self, obj):
        return obj.step_number

    @admin.display(description="#")
    def position_shown(self, obj):
        return obj.position

    @admin.display(description="selector (JSON)")
    def selector_display(self, obj):
        # In the order it is sent; a line breaks between pairs, never inside one.
        selector = obj.selector()
        if not isinstance(selector, dict):  # stored outside the form; refused when sent
            return format_html("<code>{}</code>", json.dumps(selector))
        pairs = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in selector.items()]
        # A short pair ("status": "launched") stays on one line; a long `where` wraps anywhere.
        spans = format_html_join(
            ", ", '<span class="{}">{}</span>', (("nowrap" if len(p) <= 32 else "", p) for p in pairs)
        )
        return format_html("<code>{{{}}}</code>", spans)

    @admin.display(description="edited", ordering="edited")
    def edited_display(self, obj):
        """Whether an operator changed it (`loadrunbook --update` keeps it): a fact, not an error."""
        return f"by {obj.updated_by}" if obj.edited and obj.updated_by else ("yes" if obj.edited else "—")

    @admin.display(description="sites now")
    def matching_sites(self, obj):
        count = getattr(obj, "matching", None)
        return "unknown" if count is None else count

    def get_changelist_instance(self, request):
        cl = super().get_changelist_instance(request)
        # Positions count within one environment and step: dragging is offered only there.
        self.enable_sorting = all(request.GET.get(p) for p in SCOPE_PARAMS) and "o" not in request.GET
        groups = list(cl.result_list)
        counts = matching_counts(groups)
        for group in groups:
            group.matching = counts.get(group.pk)
        return cl

    def get_actions(self, request):
        # sortable2's "move to page" actions write positions directly: not offered.
        actions = super().get_actions(request)
        return {name: action for name, action in actions.items() if not name.startswith("move_to_")}

    def update_order(self, request):
        """sortable2's ordering endpoint, through the audited reorder."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            return HttpResponseForbidden("Missing permissions to perform this request")
        try:
            items = {int(pk): int(position) for pk, position in json.loads(request.body)["updatedItems"]}
        except (ValueError, KeyError, TypeError):
            return HttpResponseBadRequest('expected {"updatedItems": [[id, position], …]}')
        groups = list(UpdateGroup.objects.select_related("environment").filter(pk__in=items))
        if len(groups) != len(items) or len({(g.environment_id, g.step_number) for g in groups}) != 1:
            return HttpResponseBadRequest("reorder the groups of one environment and step at a time")
        try:
            moved = update_groups.reorder_update_groups(
                request.user, groups[0].environment, groups[0].step_number, items, via="drag and drop"
            )
        except services.ActionRefused as exc:
            return HttpResponseForbidden(str(exc))
        except ValueError as exc:
            return HttpResponseBadRequest(str(exc))
        return JsonResponse({"moved": {str(pk): change for pk, change in moved.items()}})

    def get_form(self, request, obj=None, **kwargs):
        return _with_user(super().get_form(request, obj, **kwargs), request)

    def get_changelist_form(self, request, **kwargs):
        # The changelist's inline edits (list_editable) are checked by the same form.
        kwargs.setdefault("form", self.form)
        return _with_user(super().get_changelist_form(request, **kwargs), request)

    def save_model(self, request, obj, form, change):
        update_groups.save_update_group(request.user, obj, list(form.changed_data), via="admin")

    def log_addition(self, request, obj, message):
        """Written by `update_groups` with the values (Django's would say only "Added.")."""

    def log_change(self, request, obj, message):
        """Written by `update_groups` with the values (Django's would say "Changed Position.")."""

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        if obj is None or not allowed:
            return allowed
        return not services.update_group_refusal(request.user, [obj.environment], "delete")

    def delete_view(self, request, object_id, extra_context=None):
        # Audit a refused delete too (Django would answer 403 without a trace).
        obj = self.get_object(request, unquote(object_id))
        if request.method == "POST" and obj is not None and super().has_delete_permission(request, obj):
            try:
                services.check_update_group_change(
                    request.user, [obj.environment], "delete", parameters={"object": str(obj)}
                )
            except services.ActionRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return redirect(reverse("admin:releases_updategroup_change", args=[obj.pk]))
        return super().delete_view(request, object_id, extra_context)

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        if perms_needed and request.POST.get("post"):
            # The confirmed bulk delete that Django is about to refuse (403): audit the refusal.
            refusal = services.update_group_refusal(request.user, [g.environment for g in objs], "delete")
            AuditEvent.record(
                "updategroup_delete",
                user=request.user,
                outcome=AuditEvent.Outcome.REFUSED,
                parameters={"objects": [str(g) for g in objs]},
                message=refusal or f"{request.user.get_username()} may not delete these update groups",
            )
        return deleted, counts, perms_needed, protected

    def delete_model(self, request, obj):
        services.delete_update_groups(request.user, [obj], via="admin")

    def delete_queryset(self, request, queryset):
        # The changelist's "delete selected": one audit event per group, never a silent bulk delete.
        services.delete_update_groups(request.user, queryset.select_related("environment"), via="admin")
