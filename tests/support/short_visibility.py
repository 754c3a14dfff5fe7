"""The application's Celery app with a short broker visibility timeout, for tests of
the unacked heartbeat: ``celery -A tests.support.short_visibility.app worker`` with
``TASKSYS_TEST_VISIBILITY_TIMEOUT`` seconds (the settings refuse less than 5)."""

from __future__ import annotations

import os

from internal.infra.celery import celery_client

app = celery_client.app
app.conf.broker_transport_options = {
    **app.conf.broker_transport_options,
    "visibility_timeout": float(os.environ["TASKSYS_TEST_VISIBILITY_TIMEOUT"]),
}
