"""Tokens in the admin: each staff user sees and manages their own (a superuser sees and revokes
everyone's). A new token is shown once, on the page that answers its creation, and never again."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from . import tokens
from .models import ApiToken

LIFETIMES = [(7, "7 days"), (30, "30 days"), (90, "90 days"), (180, "180 days"), (366, "366 days")]


class ApiTokenForm(forms.ModelForm):
    lifetime = forms.TypedChoiceField(choices=LIFETIMES, coerce=int, initial=90, help_text="Then it expires.")

    class Meta:
        model = ApiToken
        fields = ["name", "read_only"]

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if ApiToken.objects.active().filter(user=self.owner, name=name).exists():
            raise forms.ValidationError("You already have an active token with this name: revoke it first.")
        return name


def _staff(request) -> bool:
    return request.user.is_active and request.user.is_staff


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = ["name", "owner", "state", "read_only", "created_at", "expires_at", "last_used_at"]
    list_select_related = ["user"]
    list_filter = ["read_only"]
    actions = ["revoke"]
    fields = ["name", "lifetime", "read_only"]

    def get_queryset(self, request):
        return super().get_queryset(request).visible_to(request.user)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        form.owner = request.user
        return form

    # A token's page is its owner's (or a superuser's): no model permission is needed for one's own.
    def has_module_permission(self, request):
        return _staff(request)

    def has_view_permission(self, request, obj=None):
        return _staff(request) and (
            obj is None or obj.user_id == request.user.pk or request.user.is_superuser
        )

    def has_add_permission(self, request):
        return _staff(request)

    def has_change_permission(self, request, obj=None):
        return False  # nothing about a token changes but its revocation (the action)

    def has_delete_permission(self, request, obj=None):
        return False  # revoked tokens stay, for the record

    @admin.display(description="owner", ordering="user__username")
    def owner(self, token):
        return token.user.get_username()

    @admin.display(description="state")
    def state(self, token):
        return token.state

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        revoked = 0
        for token in queryset.select_related("user"):
            try:
                if token.revoked_at is None:
                    tokens.revoke(token, request.user)
                    revoked += 1
            except tokens.TokenRefused as exc:
                self.message_user(request, f"{token}: {exc}", messages.ERROR)
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)

    def save_model(self, request, obj, form, change):
        row, secret = tokens.create(
            request.user,
            form.cleaned_data["name"],
            lifetime=timedelta(days=form.cleaned_data["lifetime"]),
            read_only=form.cleaned_data["read_only"],
        )
        obj.pk, obj.hashed, obj.user, obj.created_at, obj.expires_at = (
            row.pk, row.hashed, row.user, row.created_at, row.expires_at,
        )  # fmt: skip
        obj._secret = secret  # for response_add only: never stored, never in a message (the session)

    def response_add(self, request, obj, post_url_continue=None):
        context = {
            **self.admin_site.each_context(request),
            "title": f"Token {obj.name} created",
            "opts": self.opts,
            "token": obj,
            "secret": obj._secret,
        }
        response = TemplateResponse(request, "admin/api/apitoken/created.html", context)
        add_never_cache_headers(response)
        return response
