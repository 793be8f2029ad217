"""Per-protein batches run a copy of the graph cut to the per-protein outputs (ONNX Runtime otherwise
runs every node, the per-residue head included, whatever a call fetches)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from protembed import tokenizer
from protembed.runtime import OnnxModel, SessionOptions, per_protein_graph

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "protembed-student-v1"


def test_per_protein_batches_run_the_pruned_graph_with_the_same_vectors() -> None:
    model = OnnxModel.open(BUNDLED, "int8", SessionOptions(intra_op_threads=1, inter_op_threads=1))
    assert model.per_protein_session is not None
    per_protein = [o.onnx_output for o in model.card.outputs if o.level == "per_protein"]
    batch = tokenizer.batch_encode(["MKTAYIAKQRQISFVKSHFSRQ", "MSDNEVLQ" * 20])
    feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    full = model.session.run(per_protein, feeds)  # type: ignore[attr-defined]
    pruned = model.run(batch, per_protein)
    for name, value in zip(per_protein, full, strict=True):
        np.testing.assert_array_equal(pruned[name], value)
    # a batch that also asks for residues runs the whole graph
    both = model.run(batch, [*per_protein, "residue_states"])
    assert both["residue_states"].shape[:2] == batch.input_ids.shape
    np.testing.assert_array_equal(both["student"], pruned["student"])


def test_the_pruned_graph_has_no_per_residue_head() -> None:
    card_outputs = ["student", "teacher_unirep1900", "teacher_near"]
    path = BUNDLED / "model.int8.onnx"
    pruned = onnx.load_from_string(per_protein_graph(path, card_outputs))
    full = onnx.load(str(path))
    assert [o.name for o in pruned.graph.output] == card_outputs
    assert "Conv" in {n.op_type for n in full.graph.node}
    assert "Conv" not in {n.op_type for n in pruned.graph.node}
    assert len(pruned.graph.node) < len(full.graph.node)
