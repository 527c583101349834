"""The Admin API, served by the supervisor (docs/admin.md)."""
