# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Sequence(_message.Message):
    __slots__ = ("id", "sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    sequence: str
    def __init__(self, id: _Optional[str] = ..., sequence: _Optional[str] = ...) -> None: ...

class EmbedOptions(_message.Message):
    __slots__ = ("output", "per_residue", "normalize", "long_sequences", "priority")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PER_RESIDUE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    LONG_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    output: str
    per_residue: bool
    normalize: bool
    long_sequences: str
    priority: str
    def __init__(self, output: _Optional[str] = ..., per_residue: _Optional[bool] = ..., normalize: _Optional[bool] = ..., long_sequences: _Optional[str] = ..., priority: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("sequences", "options")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[Sequence]
    options: EmbedOptions
    def __init__(self, sequences: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., options: _Optional[_Union[EmbedOptions, _Mapping]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("index", "id", "vector", "shape", "cached", "length", "windows", "truncated")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    vector: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    cached: bool
    length: int
    windows: int
    truncated: bool
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., vector: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., cached: _Optional[bool] = ..., length: _Optional[int] = ..., windows: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("items", "residues")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    RESIDUES_FIELD_NUMBER: _ClassVar[int]
    items: int
    residues: int
    def __init__(self, items: _Optional[int] = ..., residues: _Optional[int] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "model_version", "output", "dim", "per_residue", "embeddings", "usage", "model_variant")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    PER_RESIDUE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VARIANT_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    output: str
    dim: int
    per_residue: bool
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    usage: Usage
    model_variant: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., output: _Optional[str] = ..., dim: _Optional[int] = ..., per_residue: _Optional[bool] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., model_variant: _Optional[str] = ...) -> None: ...

class EmbedStreamRequest(_message.Message):
    __slots__ = ("request_id", "sequences", "options")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    sequences: _containers.RepeatedCompositeFieldContainer[Sequence]
    options: EmbedOptions
    def __init__(self, request_id: _Optional[str] = ..., sequences: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., options: _Optional[_Union[EmbedOptions, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "type", "index")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    type: str
    index: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., type: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class EmbedStreamResponse(_message.Message):
    __slots__ = ("request_id", "response", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    response: EmbedResponse
    error: Error
    def __init__(self, request_id: _Optional[str] = ..., response: _Optional[_Union[EmbedResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model", "model_version", "default_output", "output_dims", "provider", "max_length", "max_stream_in_flight", "info_json")
    class OutputDimsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIMS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    default_output: str
    output_dims: _containers.ScalarMap[str, int]
    provider: str
    max_length: int
    max_stream_in_flight: int
    info_json: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., default_output: _Optional[str] = ..., output_dims: _Optional[_Mapping[str, int]] = ..., provider: _Optional[str] = ..., max_length: _Optional[int] = ..., max_stream_in_flight: _Optional[int] = ..., info_json: _Optional[str] = ...) -> None: ...
