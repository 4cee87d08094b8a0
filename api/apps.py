from django.apps import AppConfig


class ApiConfig(AppConfig):
    """The HTTP API (`/api/v1/`) and the personal tokens that authenticate it."""

    name = "api"
    verbose_name = "API"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import schema  # noqa: F401 - registers the Bearer scheme with drf-spectacular
