"""The HTTP API: `app.api.main:app` (or `create_app()`)."""
