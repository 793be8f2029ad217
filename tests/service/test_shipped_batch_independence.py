"""The bundled model's files give a protein the same vectors alone and inside a padded batch of proteins
of other lengths, for every variant the card lists (the cache stores one vector per sequence, whichever
batch computed it first)."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np
import pytest

from protembed.artifact import read_model_card
from protembed.runtime import OnnxModel, SessionOptions
from protembed.settings import default_model_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PROTEMBED_DATA_DIR") or REPO.parent / "shared" / "data")
LIMIT = 1e-4


@pytest.fixture(scope="module")
def proteins() -> list[str]:
    """24 DeepLoc test proteins spread over 20 to 700 residues, cut to the model's window."""
    path = DATA / "eval" / "deeploc" / "test.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found (set PROTEMBED_DATA_DIR to the shared data folder)")
    if not (default_model_dir() / "model.json").is_file():
        pytest.skip("bundled model not built")
    with path.open() as fh:
        rows = csv.DictReader(fh, delimiter="\t")
        seqs = sorted({r["sequence"] for r in rows if 20 <= len(r["sequence"]) <= 700})
    step = len(seqs) // 24
    window = read_model_card(default_model_dir()).max_length
    picked = sorted(seqs, key=len)[::step][:24]
    assert len(picked) == 24 and len(picked[0]) < 60 and len(picked[-1]) > window
    return [s[:window] for s in picked]


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_a_protein_gets_the_same_vectors_alone_and_in_a_batch(variant: str, proteins: list[str]) -> None:
    folder = default_model_dir()
    card = read_model_card(folder)
    if card.file(variant) is None:
        pytest.skip(f"the bundled card lists no {variant} file")
    model = OnnxModel.open(folder, variant, SessionOptions(intra_op_threads=1, inter_op_threads=1))
    outputs = [o.onnx_output for o in card.outputs]
    alone = [model.embed([s], outputs) for s in proteins]
    order = list(range(len(proteins)))
    random.Random(3).shuffle(order)
    worst = (0.0, "")
    for start in range(0, len(order), 8):  # batches of 8 mixed lengths: most rows are mostly padding
        members = order[start : start + 8]
        batch = model.embed([proteins[i] for i in members], outputs)
        for row, i in enumerate(members):
            for name in outputs:
                diff = float(np.abs(batch[name][row] - alone[i][name][0]).max())
                if diff > worst[0]:
                    worst = (diff, f"{name} of protein {i} ({len(proteins[i])} residues)")
    assert worst[0] <= LIMIT, f"{variant}: {worst[1]} differs by {worst[0]:.3g} alone vs in a batch"
