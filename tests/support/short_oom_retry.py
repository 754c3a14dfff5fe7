"""The application's Celery app retrying a result store that Redis refuses for lack of
memory for ``TASKSYS_TEST_OOM_RETRY_PERIOD`` seconds instead of 600:
``celery -A tests.support.short_oom_retry.app worker``."""

from __future__ import annotations

import os

from internal.infra.celery import celery_client
from pkg.celery_task._options import configure

app = celery_client.app
configure(app, store_oom_retry_period=float(os.environ["TASKSYS_TEST_OOM_RETRY_PERIOD"]))
