"""The one place domain errors become gRPC statuses (as ``http/errors.py`` is for HTTP): each error type
carries its ``grpc_code`` (errors.py), so REST and gRPC cannot disagree."""

from __future__ import annotations

import grpc
import grpc.aio

from protembed.errors import OverloadedError, ProtembedError
from protembed.proto import embedder_pb2 as pb


def status_code(err: ProtembedError) -> grpc.StatusCode:
    """The gRPC status of a domain error, from its ``grpc_code`` (errors.py is the single source)."""
    return getattr(grpc.StatusCode, err.grpc_code, grpc.StatusCode.INTERNAL)


def error_metadata(err: ProtembedError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that lets clients act on an error: its type, the item, when to retry."""
    md: list[tuple[str, str]] = [("protembed-error-type", err.error_type)]
    index = getattr(err, "index", None)
    if isinstance(index, int):
        md.append(("protembed-error-index", str(index)))
    if isinstance(err, OverloadedError):
        md.append(("retry-after", f"{err.retry_after_s:g}"))
    return tuple(md)


def error_message(err: ProtembedError) -> pb.Error:
    """A per-request error inside a stream (the stream itself goes on)."""
    index = getattr(err, "index", None)
    return pb.Error(
        code=status_code(err).name,
        message=err.message,
        type=err.error_type,
        index=index if isinstance(index, int) else -1,
    )


async def abort(context: grpc.aio.ServicerContext, err: ProtembedError) -> None:
    await context.abort(status_code(err), err.message, trailing_metadata=error_metadata(err))
