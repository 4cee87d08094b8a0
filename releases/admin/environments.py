"""Environments: edited here, every change through `services.change_environment` exactly as
`manage.py environment set` (checked, audited), and a connection test."""

from django import forms
from django.contrib import admin, messages

from .. import services
from ..connectivity import test_connection
from ..models import AuditEvent, Environment


def _with_user(form_class, request):
    """The form class with the acting user attached, for permission checks in `clean`."""
    return type(form_class.__name__, (form_class,), {"user": request.user})


class EnvironmentForm(forms.ModelForm):
    """Refuses, as a form error naming the missing permission, what `environment set` refuses."""

    user = None  # set per request by EnvironmentAdmin.get_form

    def clean(self):
        cleaned = super().clean()
        requested = {f: cleaned[f] for f in self.changed_data if f in cleaned}
        if requested and self.instance.pk is not None:
            # The instance still holds the stored values here (the form copies them in later).
            try:
                services.check_environment_change(self.user, self.instance, requested, via="admin")
            except services.ActionRefused as exc:
                self.refused = True
                raise forms.ValidationError(str(exc)) from None
        return cleaned

    def _post_clean(self):
        super()._post_clean()
        # Model validation (e.g. another environment's password variable) is refused: audit it too.
        if self._errors and self.instance.pk is not None and not getattr(self, "refused", False):
            messages = [f"{field}: {' '.join(errors)}" for field, errors in self._errors.items()]
            AuditEvent.record(
                "environment_set",
                user=self.user,
                environment=Environment.objects.get(pk=self.instance.pk),
                outcome=AuditEvent.Outcome.REFUSED,
                parameters={"requested": {f: self.data.get(f) for f in self.changed_data}},
                message=f"{self.instance.name}: {'; '.join(messages)} (via admin)",
            )


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    """Changes go through `services.change_environment`, exactly as `manage.py environment set`.

    No add and no delete here: the runbook's steps name DEV, TEST and PROD, which `loadrunbook`
    creates; steps reference their environment (PROTECT) and update groups cascade from it.
    """

    form = EnvironmentForm
    list_display = (
        "name",
        "order",
        "api_url",
        "username",
        "password_env",
        "parallelism",
        "protected",
        "two_person",
    )
    actions = ["test_connection"]

    @admin.action(description="Test connection (credentials check, changes nothing)", permissions=["change"])
    def test_connection(self, request, queryset):
        # Sends the environment's credentials to its URL (one request each), hence `change`.
        for environment in queryset:
            ok, message = test_connection(environment, request.user)
            self.message_user(request, message, messages.SUCCESS if ok else messages.ERROR)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_form(self, request, obj=None, **kwargs):
        return _with_user(super().get_form(request, obj, **kwargs), request)

    def save_model(self, request, obj, form, change):
        requested = {f: form.cleaned_data[f] for f in form.changed_data if f in form.cleaned_data}
        services.change_environment(obj, request.user, requested, via="admin")
        obj.refresh_from_db()
