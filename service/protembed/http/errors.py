"""The one place where errors become HTTP responses.

Domain errors carry their status (``protembed.errors``); request-shape errors from FastAPI/pydantic are
rewritten into a message that names the item; everything uses one envelope:
``{"error": {"type": ..., "message": ..., ...}}`` (the shape OpenAI-style clients already parse).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from protembed.errors import OverloadedError, ProtembedError

log = logging.getLogger(__name__)


def error_response(
    status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"type": error_type, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def protembed_error_response(exc: ProtembedError) -> JSONResponse:
    headers = None
    if isinstance(exc, OverloadedError):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    body = {k: v for k, v in exc.to_dict().items() if v is not None}
    return JSONResponse({"error": body}, status_code=exc.http_status, headers=headers)


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def describe_validation_errors(errors: Sequence[Any]) -> tuple[int, str, str, dict[str, Any]]:
    """(status, type, message, extra) for FastAPI's validation errors, naming the item where possible."""
    errs = [dict(e) for e in errors]
    for e in errs:
        if e.get("type") == "json_invalid":
            loc = e.get("loc", ())
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            reason = (e.get("ctx") or {}).get("error", e.get("msg", ""))
            return 400, "invalid_json", f"request body is not valid JSON{where}: {reason}", {}
    details = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errs
    ]
    first = errs[0] if errs else {}
    loc = [p for p in first.get("loc", ()) if p != "body"]
    # An item of a list field ("sequences"/"input"): report it as "item N", as the engine does.
    if len(loc) >= 2 and loc[0] in ("sequences", "input") and isinstance(loc[1], int):
        index = loc[1]
        item = first.get("input")
        # For an object item, the useful error is the one from the object branch of the union.
        branch = next(
            (
                e
                for e in errs
                if len(e.get("loc", ())) >= 5 and e["loc"][2] == index and e["loc"][3] == "SequenceItem"
            ),
            None,
        )
        if isinstance(item, dict) and branch is not None:
            field = ".".join(str(p) for p in branch["loc"][4:])
            msg = f"item {index}: field {field!r}: {branch.get('msg', 'invalid')}"
        elif loc[0] == "sequences":
            msg = (
                f'item {index}: expected a sequence string or an object {{"id", "sequence"}}, '
                f"got {_type_name(item)}"
            )
        else:
            msg = f"item {index}: expected a sequence string, got {_type_name(item)}"
        return 422, "invalid_request", msg, {"index": index, "details": details}
    if not loc:
        msg = f"request body: {first.get('msg', 'invalid')} (expected a JSON object)"
    else:
        field = ".".join(str(p) for p in loc)
        got = first.get("input")
        msg = f"field {field!r}: {first.get('msg', 'invalid')}"
        if first.get("type") != "missing":
            msg += f" (got {_type_name(got)})"
    return 422, "invalid_request", msg, {"details": details}


def install_error_handlers(app: FastAPI) -> None:
    async def on_protembed(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProtembedError)
        if exc.http_status >= 500 and exc.http_status != 503:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return protembed_error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        status, etype, message, extra = describe_validation_errors(exc.errors())
        return error_response(status, etype, message, **extra)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")

    app.add_exception_handler(ProtembedError, on_protembed)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
