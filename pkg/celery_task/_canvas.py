"""Workflows by task name: signatures checked like a submit, then Celery's own
``chain``, ``group`` and ``chord`` (which send through ``send_task``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from celery import Celery
from celery.canvas import Signature
from celery.canvas import chain as celery_chain
from celery.canvas import chord as celery_chord
from celery.canvas import group as celery_group
from celery.result import AsyncResult, GroupResult

from ._errors import InvalidRequestError, unreachable
from ._validation import Validator

__all__ = ["Canvas"]


class Canvas:
    """Builds and sends workflows for one app."""

    def __init__(self, app: Celery, validator: Validator) -> None:
        self.app = app
        self.validator = validator
        self.url = str(app.conf.broker_url)

    def signature(
        self,
        task_name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> Signature:
        """A checked signature by name."""
        args_list, kwargs_dict = self.validator.signature_parts(task_name, args, kwargs, options)
        return self.app.signature(task_name, args=args_list, kwargs=kwargs_dict, **options)

    def _steps(self, signatures: Iterable[Signature | str]) -> list[Signature]:
        sigs = [self.signature(s, None, None, {}) if isinstance(s, str) else s for s in signatures]
        if not sigs:
            raise InvalidRequestError("a workflow needs at least one task", field="steps")
        for sig in sigs:
            if not isinstance(sig, Signature):
                raise InvalidRequestError(
                    f"expected a signature or task name, got {type(sig).__name__}", field="steps"
                )
        return sigs

    def chain(self, signatures: Iterable[Signature | str], options: dict[str, Any]) -> AsyncResult:
        """Send a chain; the last task's result."""
        workflow = celery_chain(*self._steps(signatures), app=self.app)
        with unreachable("could not send chain", self.url):
            return workflow.apply_async(**options)

    def group(self, signatures: Iterable[Signature | str], options: dict[str, Any]) -> GroupResult:
        """Send a group and save its result so it can be restored by id."""
        workflow = celery_group(*self._steps(signatures), app=self.app)
        with unreachable("could not send group", self.url):
            result = workflow.apply_async(**options)
            result.save()
        return cast(GroupResult, result)

    def chord(
        self, header: Iterable[Signature | str], body: Signature | str, options: dict[str, Any]
    ) -> AsyncResult:
        """Send a chord; the body's result."""
        (body_sig,) = self._steps([body])
        workflow = celery_chord(self._steps(header), body_sig, app=self.app)
        with unreachable("could not send chord", self.url):
            return workflow.apply_async(**options)
