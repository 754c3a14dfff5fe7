"""Errors the service layer raises for its own rules; the API maps them to HTTP in
``internal/api/errors.py``, next to the errors of :mod:`pkg.celery_task`.

The tree::

    ServiceError
    └── InvalidInputError (also ValueError)   input a service refuses; nothing was sent
"""

from __future__ import annotations

__all__ = ["InvalidInputError", "ServiceError"]


class ServiceError(Exception):
    """Base class of every error a service raises on purpose."""


class InvalidInputError(ServiceError, ValueError):
    """The input breaks a rule of the service (an unknown queue, a chord without a
    callback, ...); ``field`` names the offending field when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
