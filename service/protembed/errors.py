"""Domain errors. Transports map them to HTTP and gRPC status in exactly one place each
(``protembed.http.errors`` and ``protembed.grpc_server``) using the ``http_status`` / ``grpc_code``
attributes set here, so the two can never disagree."""

from __future__ import annotations


class ProtembedError(Exception):
    """Base class: a message a client can act on, plus the status it maps to."""

    http_status = 500
    # name of a grpc.StatusCode member; kept as a string so this module stays grpc-free
    grpc_code = "INTERNAL"
    error_type = "internal_error"
    # (body key, attribute) pairs a subclass adds to its error body, so a client can act on them
    detail_fields: tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"type": self.error_type, "message": self.message}
        d.update((key, getattr(self, attr)) for key, attr in self.detail_fields)
        return d


class InvalidSequenceError(ProtembedError):
    """A sequence that cannot be read: names the item (its index), and where known the character."""

    http_status = 422
    grpc_code = "INVALID_ARGUMENT"
    error_type = "invalid_sequence"
    detail_fields = (("index", "index"), ("id", "item_id"), ("position", "position"))

    def __init__(
        self,
        index: int | None,
        problem: str,
        *,
        item_id: str | None = None,
        position: int | None = None,
        character: str | None = None,
    ) -> None:
        self.index = index
        self.item_id = item_id
        self.problem = problem
        self.position = position
        self.character = character
        super().__init__(self._render())

    def _render(self) -> str:
        where = "sequence" if self.index is None else f"item {self.index}"
        if self.item_id is not None:
            where += f" (id {self.item_id!r})"
        return f"{where}: {self.problem}"

    def with_item(self, index: int, item_id: str | None = None) -> InvalidSequenceError:
        """The same error attributed to an item of a request (the tokenizer does not know the index)."""
        err = InvalidSequenceError(
            index, self.problem, item_id=item_id, position=self.position, character=self.character
        )
        return err


class InvalidRequestError(ProtembedError):
    """A request that is well-formed JSON/protobuf but asks for something impossible."""

    http_status = 422
    grpc_code = "INVALID_ARGUMENT"
    error_type = "invalid_request"


class SequenceTooLongError(ProtembedError):
    http_status = 413
    grpc_code = "INVALID_ARGUMENT"
    error_type = "sequence_too_long"
    detail_fields = (
        ("index", "index"),
        ("id", "item_id"),
        ("length", "length"),
        ("max_length", "max_length"),
    )

    def __init__(
        self, index: int, length: int, max_length: int, item_id: str | None = None, *, hint: str = ""
    ) -> None:
        self.index, self.length, self.max_length, self.item_id = index, length, max_length, item_id
        who = f"item {index}" + (f" (id {item_id!r})" if item_id is not None else "")
        super().__init__(
            f"{who}: sequence has {length} residues, more than the maximum of {max_length}"
            + (f"; {hint}" if hint else "")
        )


class RequestTooLargeError(ProtembedError):
    """Too many items, residues or bytes in one request."""

    http_status = 413
    grpc_code = "INVALID_ARGUMENT"
    error_type = "request_too_large"


class OverloadedError(ProtembedError):
    """The queue is full: refuse at once instead of queueing without bound."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    error_type = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReadyError(ProtembedError):
    http_status = 503
    grpc_code = "UNAVAILABLE"
    error_type = "not_ready"


class DeadlineExceededError(ProtembedError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"
    error_type = "deadline_exceeded"


class RequestCancelledError(ProtembedError):
    """The client went away (disconnected or cancelled the call) before its items reached the model."""

    http_status = 499  # nginx's "client closed request"; nobody reads it, but logs and metrics do
    grpc_code = "CANCELLED"
    error_type = "cancelled"


class UnauthenticatedError(ProtembedError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"
    error_type = "unauthenticated"


class ModelArtifactError(ProtembedError):
    """A model folder that is missing, corrupt or does not match its card: names the file."""

    http_status = 500
    grpc_code = "INTERNAL"
    error_type = "model_artifact"


class ProviderUnavailableError(ProtembedError):
    """The operator asked for execution providers none of which can run here (the server does not start)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    error_type = "provider_unavailable"


class ModelOutputError(ProtembedError):
    """The model returned non-finite values for an item: a model fault, never cached or sent as numbers
    (JSON has no NaN, and a client would store it as an embedding)."""

    http_status = 500
    grpc_code = "INTERNAL"
    error_type = "model_output"
    detail_fields = (("index", "index"), ("id", "item_id"))

    def __init__(self, index: int, item_id: str | None = None) -> None:
        self.index = index
        self.item_id = item_id
        where = f"item {index}" + (f" (id {item_id!r})" if item_id is not None else "")
        super().__init__(f"{where}: the model produced non-finite values (NaN or infinity); none were cached")
