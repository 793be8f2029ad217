"""Request and response models of the REST API (pydantic v2), with the OpenAPI examples."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from pydantic.json_schema import WithJsonSchema

from protembed.tokenizer import AMBIGUOUS_RESIDUES, STANDARD_RESIDUES, UNKNOWN_RESIDUE, WHITESPACE

_CODES = STANDARD_RESIDUES + UNKNOWN_RESIDUE + AMBIGUOUS_RESIDUES
_SPACE = "[" + WHITESPACE.encode("unicode_escape").decode() + "]"  # escapes every regex engine reads
# What the tokenizer accepts (protembed.tokenizer.normalize), for clients and schema-driven fuzzers.
# Documented only, not enforced by pydantic: the engine's own check names the item, the character and
# its position, which a pattern mismatch could not.
SEQUENCE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "pattern": f"^{_SPACE}*[{_CODES}{_CODES.lower()}]+({_SPACE}*\\*)?{_SPACE}*$",
    "description": "Amino-acid sequence: one-letter codes, any case, surrounding whitespace and one "
    "trailing '*' ignored; U, Z, O and B read as X.",
}
SequenceText = Annotated[str, WithJsonSchema(SEQUENCE_SCHEMA)]


# Options both embedding requests (/embed and /v1/embeddings) take, spelled once.
LongSequences = Annotated[
    Literal["chunk", "truncate", "reject"] | None,
    Field(
        description="Sequences longer than the model's window (GET /info: limits.max_length): 'chunk' "
        "(overlapping windows pooled into one vector; per-residue output stitched to the input's "
        "length), 'truncate' (the first max_length residues) or 'reject' (413 naming the item). "
        "Default: the server's long_sequences setting.",
    ),
]
Priority = Annotated[
    Literal["interactive", "bulk"],
    Field(
        description="'bulk' for throughput work (bulk embedding, workflows): it runs when no interactive "
        "work is queued (waiting at most the server's bulk_max_wait_s) and may fill only part of the queue.",
    ),
]


class SequenceItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        default=None, description="Your identifier, echoed back in the result.", max_length=256
    )
    sequence: SequenceText


class EmbedRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"sequences": ["MKTAYIAKQRQISFVKSHFSRQ", {"id": "p1", "sequence": "MVLSPADKTNVKAAW"}]}
            ]
        },
    )

    sequences: list[SequenceText | SequenceItem] = Field(
        description="Items to embed: plain sequences, or objects with an id and a sequence.",
        json_schema_extra={"minItems": 1},  # documented; the engine's own check names the problem
    )
    output: str | None = Field(
        default=None,
        description="Embedding space: 'student' (default) or a teacher output listed by GET /info.",
    )
    per_residue: StrictBool = Field(
        default=False, description="Return one vector per residue instead of one per protein."
    )
    normalize: StrictBool = Field(default=False, description="L2-normalize each vector.")
    encoding: Literal["float", "base64"] = Field(
        default="float",
        description="'float' lists, or 'base64' of little-endian float32 (row-major for per_residue).",
    )
    long_sequences: LongSequences = None
    priority: Priority = "interactive"


class EmbeddingData(BaseModel):
    index: int
    id: str | None = None
    embedding: list[float] | list[list[float]] | str
    cached: bool
    length: int = Field(description="Residues embedded (of the normalized sequence, after truncation).")
    windows: int = Field(default=1, description="Model windows the vector comes from (over 1: chunked).")
    truncated: bool = Field(default=False, description="Only the first max_length residues were embedded.")


class Usage(BaseModel):
    items: int
    residues: int


class EmbedResponseModel(BaseModel):
    model: str
    model_version: str
    model_variant: str = Field(description="The model file that computed the vectors: fp32, int8 or fp16.")
    output: str
    dim: int
    per_residue: bool
    encoding: Literal["float", "base64"] = "float"
    data: list[EmbeddingData]
    usage: Usage


class OpenAIEmbeddingsRequest(BaseModel):
    """The OpenAI / NVIDIA NIM embeddings request; ``input`` items are protein sequences."""

    model_config = ConfigDict(
        extra="allow",  # clients send fields such as "user" or "input_type"; they are accepted and ignored
        json_schema_extra={
            "examples": [{"input": ["MKTAYIAKQRQISFVKSHFSRQ"], "model": "protembed-student-v1"}]
        },
    )

    input: Annotated[
        SequenceText | list[SequenceText],
        WithJsonSchema(
            {"anyOf": [SEQUENCE_SCHEMA, {"type": "array", "items": SEQUENCE_SCHEMA, "minItems": 1}]}
        ),
    ] = Field(description="One sequence or a list of sequences.")
    model: str | None = Field(
        default=None, description="The served model id, or '<model id>/<output>' to pick a teacher space."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        default=None, ge=1, description="Accepted only if equal to the output's dimension."
    )
    long_sequences: LongSequences = None
    priority: Priority = "interactive"


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    windows: int = Field(default=1, description="protembed extension: model windows (over 1: chunked).")
    truncated: bool = Field(default=False, description="protembed extension: cut to the model's window.")


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class ErrorBody(BaseModel):
    type: str
    message: str
    index: int | None = None
    id: str | None = None
    position: int | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


EMBED_EXAMPLES: dict[str, dict[str, Any]] = {
    "plain": {
        "summary": "Two sequences, student space",
        "value": {"sequences": ["MKTAYIAKQRQISFVKSHFSRQ", "MVLSPADKTNVKAAW"]},
    },
    "ids": {
        "summary": "Items with ids, normalized, base64",
        "value": {
            "sequences": [{"id": "P69905", "sequence": "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF"}],
            "normalize": True,
            "encoding": "base64",
        },
    },
    "per_residue": {
        "summary": "Per-residue vectors",
        "value": {"sequences": ["MKTAYIAKQR"], "per_residue": True},
    },
}

OPENAI_EXAMPLES: dict[str, dict[str, Any]] = {
    "openai": {
        "summary": "OpenAI-style request",
        "value": {
            "input": ["MKTAYIAKQRQISFVKSHFSRQ"],
            "model": "protembed-student-v1",
            "encoding_format": "float",
        },
    }
}
