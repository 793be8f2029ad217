"""The one typed settings object of the server.

Every knob is a field here with a description; environment variables (prefix ``PROTEMBED_``), the
``protembed serve`` flags, ``--help`` and the README settings table are all generated from these
definitions, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_ID = "protembed-student-v1"


def default_model_dir() -> Path:
    """``models/protembed-student-v1`` of the source tree this package lives in.

    The package sits at ``<repo>/service/protembed``; when it is installed elsewhere (a wheel), the
    folder is looked up under the working directory instead, and ``--model`` overrides both.
    """
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / "models" / DEFAULT_MODEL_ID
    return Path.cwd() / "models" / DEFAULT_MODEL_ID


_PROVIDER_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


class Settings(BaseSettings):
    """Server settings: env vars ``PROTEMBED_<FIELD>`` or ``protembed serve --<field>`` flags."""

    model_config = SettingsConfigDict(
        env_prefix="PROTEMBED_",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    # --- transports -------------------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1",
        description="Interface the HTTP and gRPC servers bind to (0.0.0.0 in a container).",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port (REST API, /metrics, /docs).")
    grpc_port: int = Field(
        default=50051,
        ge=0,
        le=65535,
        description="gRPC port, served by the same process and engine; 0 disables gRPC.",
    )
    grpc_max_message_bytes: int = Field(
        default=16 * 2**20, gt=0, description="Largest gRPC message accepted or sent, in bytes."
    )
    max_stream_in_flight: int = Field(
        default=1024,
        gt=0,
        description="Most sequences in flight per gRPC stream; the server stops reading the stream at "
        "this bound.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must send a request's headers within this many seconds of opening (or "
        "of its previous response), or it is closed: slow-header clients cannot hold connections open.",
    )
    max_body_bytes: int = Field(
        default=8 * 2**20, gt=0, description="Largest HTTP request body, in bytes; larger bodies get 413."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="If set, /embed, /v1/embeddings, /info and gRPC calls need 'Authorization: Bearer <key>' "
        "(or 'x-api-key: <key>'). Health and metrics stay open.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Log level of the server and uvicorn."
    )
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry traces, metrics and logs (FastAPI 0.165 and later), "
        "for deployments that configure an OpenTelemetry SDK. Off by default: even with no SDK it checks "
        "the global providers on every request, a tenth of a cache hit's cost. /metrics (Prometheus) is "
        "always on.",
    )

    # --- model ------------------------------------------------------------------------------------
    model: Path = Field(
        default_factory=default_model_dir,
        description="Model folder holding model.json and the ONNX files (default: the bundled "
        f"models/{DEFAULT_MODEL_ID}).",
    )
    model_variant: str = Field(
        default="auto",
        description="Which file of the model card to serve: fp32, int8 or fp16 (as listed in model.json); "
        "auto = int8 when ONNX Runtime runs on the CPU and the card has it (1.4-1.7x the residues/s of "
        "fp32, probe scores within 0.01: reports/), fp32 otherwise.",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference, comma-separated. One that "
        "cannot run here (not in this onnxruntime build; a GPU provider without a driver, a device or "
        "its CUDA/cuDNN libraries) is skipped quietly, and one INFO line and /info say why. Without "
        "CPUExecutionProvider in the list the server refuses to start when none of them can run.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime intra-op threads (0 = ORT default)."
    )
    inter_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime inter-op threads (0 = ORT default)."
    )
    intra_op_spinning: bool = Field(
        default=True,
        description="Let ONNX Runtime's intra-op threads busy-wait for more work (ORT's default; 3-7% more "
        "throughput measured here on dedicated cores). Turn off where other processes share the cores: "
        "a spinning thread burns CPU after each batch.",
    )
    fuse_attention: bool = Field(
        default=True,
        description="On the CPU, run each attention block of the model as one ONNX Attention node (a copy "
        "of the graph rewritten at load; the file is unchanged). Same vectors; the int8 file's per-protein "
        "path runs 1.05-1.07x the residues/s of the graph as exported on 2 cores, fp32 about 1.0x "
        "(reports/attention_fusion.md). Needs onnxruntime 1.23 or later; an older one runs the graph as "
        "exported. /info says which runs.",
    )
    warmup: bool = Field(default=True, description="Run a warm-up batch before reporting ready.")
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM: readiness and gRPC health flip to not serving at once and new work gets "
        "503 / UNAVAILABLE; queued work may finish for this long, then what is left gets 503 / "
        "UNAVAILABLE. Keep it below the pod's terminationGracePeriodSeconds minus its preStop sleep.",
    )

    # --- batching ---------------------------------------------------------------------------------
    max_batch_tokens: int = Field(
        default=0,
        ge=0,
        description="Token budget of one batch, counting padding (batch size x longest item); 0 = by "
        "the active execution provider: 2048 on the CPU (where small batches run fastest, their attention "
        "scores staying in cache), 16384 on a GPU.",
    )
    max_batch_size: int = Field(default=64, gt=0, description="Most items in one batch.")
    max_wait_ms: float = Field(
        default=5.0,
        ge=0,
        description="With batching=bucketed, how long the oldest queued item may be passed over for "
        "fuller batches of other lengths, in milliseconds; then the next batch is built around it. An "
        "idle model takes queued items at once.",
    )
    max_queue_tokens: int = Field(
        default=262144,
        gt=0,
        description="Queue bound in residues; past it requests are refused with 429 + Retry-After.",
    )
    batching: Literal["bucketed", "fifo"] = Field(
        default="bucketed",
        description="How queued items are grouped: 'bucketed' (similar lengths together, padding share "
        "bounded by max_padding_ratio) or 'fifo' (arrival order, no padding bound; a baseline).",
    )
    bulk_max_wait_s: float = Field(
        default=5.0,
        ge=0,
        description="Requests with priority=bulk run when no interactive work is queued, but wait at "
        "most this long for it (then they compete as interactive ones), so bulk work is never starved.",
    )
    bulk_queue_share: float = Field(
        default=0.75,
        gt=0,
        le=1,
        description="Share of max_queue_tokens that bulk requests may fill (429 beyond), so a bulk flood "
        "leaves room for interactive requests.",
    )
    bulk_batch_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="A bulk batch's token budget as a share of max_batch_tokens: a running batch is never "
        "interrupted, so smaller bulk batches bound how long an interactive request waits behind one.",
    )
    max_padding_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Bucketed batching: most padding share of a batch's padded tokens (1 = no bound); "
        "an item that would push a batch past it waits for a batch of its own length.",
    )

    # --- request limits ---------------------------------------------------------------------------
    long_sequences: Literal["chunk", "truncate", "reject"] = Field(
        default="chunk",
        description="Sequences longer than the model's max length, unless a request says otherwise: "
        "'chunk' (overlapping windows through the same batcher, pooled back into one vector; "
        "per-residue output stitched to the input's length), 'truncate' (the first max_length "
        "residues) or 'reject' (413 naming the item).",
    )
    max_sequence_length: int = Field(
        default=40_000,
        gt=0,
        description="Longest sequence accepted, in residues (the longest known proteins, titins, have "
        "about 35,000); longer ones get 413 naming the item, whatever long_sequences says.",
    )
    chunk_overlap: int = Field(
        default=64,
        ge=0,
        description="Residues shared by neighbouring windows when long_sequences=chunk (64: as close to the "
        "teachers' whole-sequence vectors as 128 or 256, for less compute; reports/long_sequences.md).",
    )
    # 128 MiB: the longest sequence accepted (max_sequence_length) must get its per-residue answer as
    # base64 over REST; at 40,000 residues and model 1.4.0's 384 values a residue that is 82 MB.
    max_response_bytes: int = Field(
        default=128 * 2**20,
        gt=0,
        description="Largest answer a request may ask for, estimated before any work is done (per-residue "
        "output of many long sequences is the large case): 413 naming the limit beyond. Over REST a float "
        "costs about 22 bytes as JSON text and 5.3 as base64; over gRPC 4 (and grpc_max_message_bytes "
        "applies too).",
    )
    max_items_per_request: int = Field(
        default=256, gt=0, description="Most sequences in one request (413 beyond)."
    )
    max_residues_per_request: int = Field(
        default=131072, gt=0, description="Most residues, summed over a request's sequences (413 beyond)."
    )

    # --- cache ------------------------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PROTEMBED_REDIS_URL", "REDIS_URL", "redis_url"),
        description="Redis URL (also read from REDIS_URL); when set the cache is shared in Redis instead of "
        "in-process. redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS) uses a Redis "
        "Cluster: lookups go to every node concurrently, one round trip per node.",
    )
    cache_ttl_s: int = Field(
        default=7 * 86400, ge=0, description="Time to live of Redis cache entries in seconds (0 = none)."
    )
    cache_max_bytes: int = Field(
        default=256 * 2**20,
        ge=0,
        description="Size bound of the in-process LRU cache in bytes (0 disables it).",
    )
    redis_timeout_s: float = Field(
        default=0.1,
        gt=0,
        description="Per-call Redis timeout in seconds; a slower Redis is skipped and the model answers.",
    )
    cache_encoding: Literal["float32", "float16"] = Field(
        default="float32",
        description="How cached vectors are stored (Redis and in-process): float16 holds twice the "
        "sequences in the same memory, at most 5e-4 relative error per value (docs/cache.md); the cache "
        "key names the encoding.",
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: Any) -> Any:
        # Env vars and flags give "CUDAExecutionProvider,CPUExecutionProvider"; short names are accepted.
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, list):
            value = [_PROVIDER_ALIASES.get(str(p).lower(), p) for p in value]
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.providers:
            raise ValueError("providers must name at least one ONNX Runtime execution provider")
        return self


# --- flags generated from the fields ---------------------------------------------------------------


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None, bool]:
    """(argparse type, choices, is_bool) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _flag_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(inner[0])
    if origin is Literal:
        return str, [str(a) for a in typing.get_args(annotation)], False
    if origin is list:
        return str, None, False
    if annotation is bool:
        return None, None, True
    if annotation in (int, float, Path):
        return annotation, None, False
    return str, None, False


def add_settings_arguments(parser: argparse.ArgumentParser, fields: list[str] | None = None) -> None:
    """Add one ``--flag`` per Settings field (or the listed ones); unset flags leave env/defaults alone."""
    group = parser.add_argument_group("settings (also env vars PROTEMBED_<NAME>)")
    for name, info in Settings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        flag = "--" + name.replace("_", "-")
        typ, choices, is_bool = _flag_type(info.annotation)
        default = info.get_default(call_default_factory=True)
        shown = default.get_secret_value() if isinstance(default, SecretStr) else default
        if isinstance(shown, list):
            shown = ",".join(shown)
        help_text = f"{info.description} [default: {shown}]".replace("%", "%%")
        if is_bool:
            group.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                flag, dest=name, type=typ, choices=choices, default=argparse.SUPPRESS, help=help_text
            )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from env vars, overridden by the flags given on the command line."""
    overrides = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    return Settings(**overrides)


def settings_table() -> str:
    """The README's settings table (Markdown), from the same field definitions as the flags."""
    rows = ["| Env var | Flag | Default | Description |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default)
        if name == "model":
            default = f"models/{DEFAULT_MODEL_ID}"
        env = f"PROTEMBED_{name.upper()}" + (" / REDIS_URL" if name == "redis_url" else "")
        rows.append(f"| `{env}` | `--{name.replace('_', '-')}` | `{default}` | {info.description} |")
    return "\n".join(rows)
