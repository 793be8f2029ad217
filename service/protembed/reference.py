"""Reference vectors in the model card, and the numerical self-check the server runs before it is ready.

At export the PyTorch model embeds a few fixed sequences; their outputs go into ``reference.npz`` beside
the ONNX files, and the card's ``reference`` section names the file (with its checksum) and a tolerance
per variant, measured on the exporting machine with headroom. At warm-up the server embeds the same
sequences on its active provider and variant and compares: a GPU's TF32 or fp16 path, a broken ONNX
Runtime build or a mismatched file then shows as a number in /info and /metrics and keeps the server
not ready, instead of serving wrong vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from protembed.artifact import LoadedModel, ModelCard, ReferenceSpec, Tolerance, sha256_file
from protembed.errors import ModelArtifactError
from protembed.runtime import Model

REFERENCE_FILE = "reference.npz"
# Real proteins of different lengths (ubiquitin, a zinc finger, a signal peptide + start of insulin, and
# a short peptide), cut to the model's max length when it is shorter.
SEQUENCES = (
    "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG",
    "MALWMRLLPLLALLALWGPDPAAAFVNQHLCGSHLVEALYLVCGERGFFYTPKT",
    "YKCGLCERSFVEKSALSRHQRVHKN",
    "MKTAYIAKQRQISFVKSHFSRQ",
)
# Tolerance = measured difference x HEADROOM (floors below), so another CPU's kernels pass and a wrong
# path does not. A reduced-precision file (fp16, int8) also gets a wider absolute floor: a GPU's fp16
# kernels round differently from the CPU's that measured it, while a wrong path moves far more.
HEADROOM = 4.0
MIN_MAX_ABS = 1e-4
MIN_MAX_ABS_REDUCED = 0.02
MAX_MIN_COSINE = 0.99999


def reference_sequences(max_length: int) -> list[str]:
    return [s[:max_length] for s in SEQUENCES]


def write_reference(
    folder: str | Path, sequences: Sequence[str], outputs: Mapping[str, Sequence[np.ndarray]]
) -> Path:
    """``folder/reference.npz``: the sequences and, per ONNX output name, one array per sequence."""
    arrays: dict[str, np.ndarray] = {"sequences": np.array(list(sequences), dtype=np.str_)}
    for name, values in outputs.items():
        if len(values) != len(sequences):
            raise ValueError(f"output {name}: {len(values)} arrays for {len(sequences)} sequences")
        for i, value in enumerate(values):
            arrays[f"{name}/{i}"] = np.asarray(value, dtype=np.float32)
    path = Path(folder) / REFERENCE_FILE
    with path.open("wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    return path


def read_reference(folder: str | Path, spec: ReferenceSpec) -> tuple[list[str], dict[str, list[np.ndarray]]]:
    path = Path(folder) / spec.file
    if not path.is_file():
        raise ModelArtifactError(f"{path}: reference vectors listed in model.json but missing")
    if sha256_file(path) != spec.sha256:
        raise ModelArtifactError(
            f"{path}: sha256 differs from model.json's reference entry; corrupt or replaced"
        )
    with np.load(path, allow_pickle=False) as data:
        sequences = [str(s) for s in data["sequences"]]
        indexed: dict[str, dict[int, np.ndarray]] = {}
        for key in data.files:
            if key != "sequences":
                name, index = key.rsplit("/", 1)
                indexed.setdefault(name, {})[int(index)] = data[key]
    return sequences, {n: [v[i] for i in sorted(v)] for n, v in indexed.items()}


@dataclass(frozen=True)
class Difference:
    max_abs: float
    min_cosine: float
    worst_output: str


def compare(
    expected: Mapping[str, Sequence[np.ndarray]], got: Mapping[str, Sequence[np.ndarray]]
) -> Difference:
    """Largest absolute difference and lowest cosine over every output and sequence."""
    max_abs, min_cos, worst, worst_cos = 0.0, 1.0, "", ""
    for name, values in expected.items():
        for want, have in zip(values, got[name], strict=True):
            w = np.asarray(want, dtype=np.float64).ravel()
            h = np.asarray(have, dtype=np.float64).ravel()
            if w.shape != h.shape:
                return Difference(math.inf, -1.0, f"{name} (shape {h.shape} instead of {w.shape})")
            diff = float(np.abs(w - h).max()) if w.size else 0.0
            if not math.isfinite(diff):
                return Difference(math.inf, -1.0, f"{name} (non-finite values)")
            denom = float(np.linalg.norm(w) * np.linalg.norm(h))
            cos = float(w @ h / denom) if denom > 0 else (1.0 if diff == 0 else 0.0)
            if diff > max_abs:
                max_abs, worst = diff, name
            if cos < min_cos:
                min_cos, worst_cos = cos, name
    return Difference(max_abs, min_cos, worst or worst_cos)


def tolerance_for(measured: Difference, variant: str = "fp32") -> Tolerance:
    """The card's tolerance from a difference measured at export: headroom, and floors."""
    floor = MIN_MAX_ABS if variant == "fp32" else MIN_MAX_ABS_REDUCED
    return Tolerance(
        max_abs=max(floor, measured.max_abs * HEADROOM),
        min_cosine=min(MAX_MIN_COSINE, 1.0 - (1.0 - measured.min_cosine) * HEADROOM),
    )


@dataclass(frozen=True)
class SelfCheck:
    """What the warm-up self-check found; ``status`` is passed, failed or skipped (no reference)."""

    status: Literal["passed", "failed", "skipped"]
    detail: str
    max_abs: float | None = None
    min_cosine: float | None = None
    tolerance: Tolerance | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["tolerance"] = self.tolerance.model_dump() if self.tolerance is not None else None
        return d


def self_check(model: Model, loaded: LoadedModel) -> SelfCheck:
    """Embed the card's reference sequences with ``model`` and hold them to the variant's tolerance."""
    card: ModelCard = loaded.card
    spec = card.reference
    if spec is None:
        return SelfCheck("skipped", "the model card has no reference vectors")
    tolerance = spec.tolerance.get(loaded.variant)
    if tolerance is None:
        return SelfCheck(
            "skipped", f"the model card has no reference tolerance for variant {loaded.variant!r}"
        )
    sequences, expected = read_reference(loaded.folder, spec)
    got = model.embed(sequences, list(expected))
    diff = compare(expected, got)
    within = diff.max_abs <= tolerance.max_abs and diff.min_cosine >= tolerance.min_cosine
    what = (
        f"{loaded.variant} on {model.provider} vs {spec.computed_with or 'the export'}: "
        f"max abs diff {diff.max_abs:.3g} (tolerance {tolerance.max_abs:.3g}), "
        f"worst cosine {diff.min_cosine:.6f} (tolerance {tolerance.min_cosine:.6f})"
    )
    if within:
        return SelfCheck("passed", what, diff.max_abs, diff.min_cosine, tolerance)
    return SelfCheck(
        "failed",
        f"reference self-check failed on {diff.worst_output}: {what}",
        diff.max_abs,
        diff.min_cosine,
        tolerance,
    )


def attach_reference(
    folder: str | Path,
    sequences: Sequence[str],
    outputs: Mapping[str, Sequence[np.ndarray]],
    computed_with: str,
) -> dict[str, Difference]:
    """Write ``reference.npz`` and the card's ``reference`` section: each variant the card lists is run
    here on the CPU (one batch, as the server's self-check does) and its tolerance set from what it
    measures, with :data:`HEADROOM`. Returns the measured difference per variant."""
    import json

    from protembed.artifact import CARD_FILE, write_model_card
    from protembed.runtime import OnnxModel, SessionOptions

    folder = Path(folder)
    path = write_reference(folder, sequences, outputs)
    card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    card.pop("reference", None)  # a previous reference's checksum no longer holds while we measure
    write_model_card(folder, card)
    measured: dict[str, Difference] = {}
    for entry in card["files"]:
        cpu = SessionOptions(providers=["CPUExecutionProvider"], intra_op_threads=1, inter_op_threads=1)
        model = OnnxModel.open(folder, entry["variant"], cpu)
        got = model.embed(list(sequences), list(outputs))
        measured[entry["variant"]] = compare(outputs, got)
    card["reference"] = {
        "file": path.name,
        "computed_with": computed_with,
        "sequences": len(sequences),
        "tolerance": {v: tolerance_for(d, v).model_dump() for v, d in measured.items()},
        "measured": {v: {"max_abs": d.max_abs, "min_cosine": d.min_cosine} for v, d in measured.items()},
    }
    write_model_card(folder, card)
    return measured
