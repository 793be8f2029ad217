"""The model artifact contract: ``models/<model-id>/{model.json, model*.onnx}``.

``ModelCard`` is the schema of ``model.json``; ``write_model_card`` is the only writer (the distillation
export uses it, so checksums are always filled in the same way); ``load_model`` is the server's reader and
refuses, naming the file, anything corrupt or inconsistent with this code's tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protembed import tokenizer
from protembed.errors import ModelArtifactError

CARD_FILE = "model.json"
CARD_FORMAT = "protembed-model/1"
ONNX_INPUTS = ("input_ids", "attention_mask")


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    variant: str
    file: str
    sha256: str
    bytes: int
    parity_max_abs_diff: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    alphabet: str
    tokens: list[str]
    pad_id: int
    unknown_id: int
    special_tokens: dict[str, str] = Field(default_factory=dict)
    max_length: int = Field(gt=0)
    onnx_inputs: list[str] = Field(default_factory=lambda: list(ONNX_INPUTS))


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    onnx_output: str
    dim: int = Field(gt=0)
    level: Literal["per_protein", "per_residue"]
    space: str


class TeacherInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    dim: int
    source: str = ""
    licence: str = ""
    representation: str = ""


class Tolerance(BaseModel):
    """How far a variant's output may be from the reference vectors (largest absolute difference and
    lowest cosine over every output and reference sequence)."""

    max_abs: float = Field(ge=0)
    min_cosine: float = Field(ge=-1, le=1)


class ReferenceSpec(BaseModel):
    """Reference vectors written at export (``reference.npz``) for the server's self-check at warm-up."""

    model_config = ConfigDict(extra="allow")

    file: str
    sha256: str = ""
    bytes: int = 0
    computed_with: str = ""
    tolerance: dict[str, Tolerance] = Field(default_factory=dict)  # by variant


class ModelCard(BaseModel):
    """Schema of model.json (see the contract); unknown extra keys are kept, not dropped."""

    model_config = ConfigDict(extra="allow")

    format: Literal["protembed-model/1"] = "protembed-model/1"
    id: str
    version: str
    created: str = ""
    files: list[FileEntry] = Field(min_length=1)
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    default_output: str
    architecture: dict[str, Any] = Field(default_factory=dict)
    teachers: list[TeacherInfo] = Field(default_factory=list)
    training_data: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    licence: dict[str, Any] = Field(default_factory=dict)
    reference: ReferenceSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be unique, got {names}")
        variants = [f.variant for f in self.files]
        if len(set(variants)) != len(variants):
            raise ValueError(f"file variants must be unique, got {variants}")
        default = self.output(self.default_output)
        if default is None or default.level != "per_protein":
            raise ValueError(f"default_output {self.default_output!r} must name a per_protein output")
        return self

    def output(self, name: str) -> OutputSpec | None:
        return next((o for o in self.outputs if o.name == name), None)

    def per_protein_outputs(self) -> list[OutputSpec]:
        return [o for o in self.outputs if o.level == "per_protein"]

    def per_residue_output(self, space: str) -> OutputSpec | None:
        """The per-residue output living in ``space`` (only the student's own space has one)."""
        return next((o for o in self.outputs if o.level == "per_residue" and o.space == space), None)

    def file(self, variant: str) -> FileEntry | None:
        return next((f for f in self.files if f.variant == variant), None)

    @property
    def max_length(self) -> int:
        return self.input.max_length


@dataclass(frozen=True)
class LoadedModel:
    """A verified artifact: the card, its folder and the ONNX file of the chosen variant."""

    card: ModelCard
    folder: Path
    variant: str
    onnx_path: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_model_card(folder: str | Path) -> ModelCard:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise ModelArtifactError(
            f"{path}: model card not found (is {Path(folder)} a protembed model folder?)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelArtifactError(f"{path}: not readable JSON: {exc}") from exc
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        raise ModelArtifactError(f"{path}: not a valid model card: {exc}") from exc


def check_tokens(card: ModelCard, where: Path) -> None:
    """The card's token table must be this code's tokenizer, id for id."""
    if tuple(card.input.tokens) != tokenizer.TOKENS or card.input.pad_id != tokenizer.PAD_ID:
        raise ModelArtifactError(
            f"{where}: input.tokens/pad_id do not match protembed.tokenizer "
            f"(card {card.input.tokens} pad {card.input.pad_id}; code {list(tokenizer.TOKENS)} "
            f"pad {tokenizer.PAD_ID}); the model was trained with another alphabet"
        )
    if card.input.unknown_id != tokenizer.UNKNOWN_ID:
        raise ModelArtifactError(
            f"{where}: input.unknown_id {card.input.unknown_id} != tokenizer's {tokenizer.UNKNOWN_ID}"
        )


def check_graph_io(card: ModelCard, onnx_path: Path, inputs: Iterable[str], outputs: Iterable[str]) -> None:
    """The ONNX graph must take the contract's inputs and produce every output the card lists."""
    have_in, have_out = set(inputs), set(outputs)
    missing_in = [n for n in card.input.onnx_inputs if n not in have_in]
    if missing_in:
        raise ModelArtifactError(f"{onnx_path}: graph lacks input(s) {missing_in} (has {sorted(have_in)})")
    missing_out = [o.onnx_output for o in card.outputs if o.onnx_output not in have_out]
    if missing_out:
        raise ModelArtifactError(
            f"{onnx_path}: graph lacks output(s) {missing_out} listed in {CARD_FILE} (has {sorted(have_out)})"
        )


def _inspect_graph(path: Path) -> tuple[list[str], list[str]]:
    import onnxruntime as ort  # imported here: reading a card needs no runtime

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped errors for unreadable graphs
        raise ModelArtifactError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
    return [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]


def _check_file(path: Path, size: int, sha256: str, what: str) -> None:
    if not path.is_file():
        raise ModelArtifactError(f"{path}: listed in {CARD_FILE} ({what}) but missing")
    actual = path.stat().st_size
    if actual != size:
        raise ModelArtifactError(
            f"{path}: size {actual} bytes differs from {size} in {CARD_FILE}; corrupt or replaced"
        )
    digest = sha256_file(path)
    if digest != sha256:
        raise ModelArtifactError(
            f"{path}: sha256 {digest} differs from {sha256} in {CARD_FILE}; corrupt or replaced"
        )


def load_model(folder: str | Path, variant: str = "fp32", *, verify_graph: bool = True) -> LoadedModel:
    """Read and verify a model folder.

    Checks the sha256 and size of EVERY file the card lists (a corrupt int8 file means a broken
    artifact even when serving fp32), the token table, and (``verify_graph``) that the chosen ONNX file
    has the contract's inputs and the card's outputs. The runtime passes ``verify_graph=False`` and
    checks the session it builds anyway, to avoid loading the graph twice.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise ModelArtifactError(f"{folder}: model folder not found")
    card = read_model_card(folder)
    card_path = folder / CARD_FILE
    check_tokens(card, card_path)
    for entry in card.files:
        _check_file(folder / entry.file, entry.bytes, entry.sha256, f"variant {entry.variant}")
    if card.reference is not None:
        _check_file(folder / card.reference.file, card.reference.bytes, card.reference.sha256, "reference")
    chosen = card.file(variant)
    if chosen is None:
        raise ModelArtifactError(
            f"{card_path}: no variant {variant!r}; available: {[f.variant for f in card.files]}"
        )
    onnx_path = folder / chosen.file
    if verify_graph:
        check_graph_io(card, onnx_path, *_inspect_graph(onnx_path))
    return LoadedModel(card=card, folder=folder, variant=variant, onnx_path=onnx_path)


def write_model_card(folder: str | Path, card: dict[str, Any]) -> Path:
    """Write ``folder/model.json`` from ``card``, filling in sha256 and bytes of every listed file.

    Also fills ``format`` and ``created`` when absent. The card is validated (schema and token table)
    before anything is written, so a bad export fails here rather than at serving time.
    """
    folder = Path(folder)
    data = json.loads(json.dumps(card))  # deep copy; also refuses non-JSON values early
    data.setdefault("format", CARD_FORMAT)
    data.setdefault("created", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    for entry in data.get("files", []):
        path = folder / entry["file"]
        if not path.is_file():
            raise ModelArtifactError(
                f"{path}: listed in the card (variant {entry.get('variant')}) but missing"
            )
        entry["sha256"] = sha256_file(path)
        entry["bytes"] = path.stat().st_size
    reference = data.get("reference")
    if reference is not None:
        path = folder / reference["file"]
        if not path.is_file():
            raise ModelArtifactError(f"{path}: the card's reference vectors are missing")
        reference["sha256"] = sha256_file(path)
        reference["bytes"] = path.stat().st_size
    target = folder / CARD_FILE
    try:
        parsed = ModelCard.model_validate(data)
    except ValidationError as exc:
        raise ModelArtifactError(f"{target}: not a valid model card: {exc}") from exc
    check_tokens(parsed, target)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(target)  # atomic: a server never reads a half-written card
    return target
