"""What every router module declares the same way: the error responses of the OpenAPI
schema, the path parameters with their patterns, and the page parameters."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query

from internal.api.errors import ErrorBody
from internal.schemas import ENTRY_NAME, IDENTIFIER, MAX_OFFSET, MAX_PAGE_SIZE

__all__ = ["ERRORS", "WITH_CONFLICT", "EntryNamePath", "IdPath", "PageLimit", "PageOffset"]

#: Error answers every API route may give (in the one error shape).
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 413, 422, 503)}
#: The same, for routes that can also answer 409.
WITH_CONFLICT: dict[int | str, dict[str, Any]] = {**ERRORS, 409: {"model": ErrorBody}}

#: A task id or dead-letter id in the path.
IdPath = Annotated[str, Path(min_length=1, max_length=255, pattern=IDENTIFIER)]
#: A periodic-task entry name in the path.
EntryNamePath = Annotated[str, Path(min_length=1, max_length=200, pattern=ENTRY_NAME)]

#: ``limit`` and ``offset`` of list endpoints.
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
PageOffset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
