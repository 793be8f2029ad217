"""Request and response models of the REST API (pydantic v2), with the OpenAPI examples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class SequenceItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        default=None, description="Your identifier, echoed back in the result.", max_length=256
    )
    sequence: str = Field(
        description="Amino-acid sequence (one-letter codes; case and surrounding spaces ignored)."
    )


class EmbedRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"sequences": ["MKTAYIAKQRQISFVKSHFSRQ", {"id": "p1", "sequence": "MVLSPADKTNVKAAW"}]}
            ]
        },
    )

    sequences: list[str | SequenceItem] = Field(
        description="Items to embed: plain sequences, or objects with an id and a sequence."
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


class EmbeddingData(BaseModel):
    index: int
    id: str | None = None
    embedding: list[float] | list[list[float]] | str
    cached: bool
    length: int = Field(description="Residues in the normalized sequence.")


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

    input: str | list[str] = Field(description="One sequence or a list of sequences.")
    model: str | None = Field(
        default=None, description="The served model id, or '<model id>/<output>' to pick a teacher space."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        default=None, description="Accepted only if equal to the output's dimension."
    )


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


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
