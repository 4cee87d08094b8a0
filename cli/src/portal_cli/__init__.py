"""The `portal` command: the Express Release Portal's release operations over its HTTP API."""

__version__ = "1.0.0"
