"""Metrics and reports of erased models: pure torch functions, no database, HTTP or Celery."""
