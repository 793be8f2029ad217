"""Reference vectors for a model folder, computed by the PyTorch student (the export's ground truth).

The server embeds the same sequences at warm-up and refuses to become ready when its provider and
variant stray past the card's tolerance (``protembed.reference``). ``export`` calls
:func:`attach_pytorch_reference` for every new folder; for a folder exported before reference vectors
existed, the PyTorch student is rebuilt from its own fp32 ONNX weights (``onnx_weights``)::

    python -m protembed_distill.export.reference_vectors models/protembed-student-v1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from protembed import tokenizer
from protembed.artifact import read_model_card
from protembed.reference import Difference, attach_reference, reference_sequences
from protembed_distill.config import ResidueAdapterConfig, StudentConfig
from protembed_distill.export.onnx import output_names
from protembed_distill.student.model import Student
from protembed_distill.student.onnx_weights import onnx_state_dict


@torch.no_grad()
def pytorch_outputs(model: Student, sequences: list[str]) -> dict[str, list[np.ndarray]]:
    """Every exported output for each sequence, each run alone (no padding), in fp32."""
    model = model.eval().float()
    out: dict[str, list[np.ndarray]] = {}
    for seq in sequences:
        ids = torch.as_tensor(tokenizer.encode(tokenizer.normalize(seq)), dtype=torch.long)[None, :]
        values = model(ids, torch.ones_like(ids))
        for name in output_names(model):  # what the ONNX graph exports (not the training-only outputs)
            value = values[name]
            out.setdefault(name, []).append(value[0].float().numpy())
    return out


def attach_pytorch_reference(folder: Path, model: Student) -> dict[str, Difference]:
    """Write the folder's reference vectors from ``model`` (the folder's own weights, heads folded)."""
    sequences = reference_sequences(read_model_card(folder).max_length)
    return attach_reference(folder, sequences, pytorch_outputs(model, sequences), "pytorch fp32")


def student_from_folder(folder: Path) -> Student:
    """The PyTorch student whose weights are the folder's fp32 ONNX file."""
    card = read_model_card(folder)
    arch = card.architecture
    cfg = StudentConfig(
        layers=arch["layers"],
        d_model=arch["d_model"],
        heads=arch["heads"],
        ffn=arch["ffn"],
        positions=arch.get("positions", "sinusoidal"),
        pool_dim=arch.get("pool_dim", 0),
        residue_adapter=(
            ResidueAdapterConfig(**{k: v for k, v in arch["residue_adapter"].items() if k != "kind"})
            if "residue_adapter" in arch
            else None
        ),
        max_length=card.max_length,
        dropout=0.0,
    )
    fp32 = card.file("fp32")
    if fp32 is None:
        raise ValueError(f"{folder}: model.json lists no fp32 file to read the weights from")
    state = onnx_state_dict(folder / fp32.file)
    heads = {
        k.split(".")[1]: int(v.shape[0])
        for k, v in state.items()
        if k.startswith("heads.") and k.endswith(".weight")
    }
    model = Student(cfg, heads)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not fit the card's student (missing {missing}, unexpected {unexpected})"
        )
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("folder", type=Path, help="model folder (model.json + ONNX files)")
    args = parser.parse_args(argv)
    measured = attach_pytorch_reference(args.folder, student_from_folder(args.folder))
    for variant, diff in measured.items():
        print(
            f"{variant}: max abs diff {diff.max_abs:.3g}, "
            f"worst cosine {diff.min_cosine:.6f} ({diff.worst_output})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
