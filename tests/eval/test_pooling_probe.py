"""The pooling-rule probe (bench tool ``pooling_probe``) on the bundled model: the served rule is the
server's own vector, and the end rules read a long chain's first and last windows."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from protembed import tokenizer
from protembed.artifact import load_model
from protembed.settings import default_model_dir
from protembed_bench.fidelity.student_vectors import ServedStudent
from protembed_bench.tools.pooling_probe import POOL_FEATURES, RULES, Features, cached_features


def _seq(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(tokenizer.STANDARD_RESIDUES) for _ in range(n))


def test_rules_on_the_served_windows(tmp_path: Path) -> None:
    folder = default_model_dir()
    seqs = [_seq(20, 1), _seq(700, 2)]  # the second needs two of the server's windows
    got = Features(folder, "int8", threads=1).run(seqs)
    served = ServedStudent(folder, "int8", tmp_path, threads=1).embed(seqs, ["student"])["student"]
    np.testing.assert_allclose(got["mean (served)"], np.stack(served), rtol=0, atol=1e-6)
    width = served[0].shape[0]
    assert got["mean + ends32(pool)"].shape == (2, 3 * width)
    assert got["mean + ends16(trunk)"].shape == (2, width + 2 * 192)  # the trunk's states are 192 wide
    assert got["mean + max(trunk)"].shape == (2, width + 192)
    assert set(got) == set(RULES)
    # the long chain's first 32 rows are those of its first window, run alone
    model = onnx.load(str(load_model(folder, "int8").onnx_path))
    model.graph.output.append(onnx.ValueInfoProto(name=POOL_FEATURES))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    enc = tokenizer.batch_encode([seqs[1][:512]])
    (features,) = session.run(
        [POOL_FEATURES], {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
    )
    np.testing.assert_allclose(
        got["mean + ends32(pool)"][1, width : 2 * width], features[0, :32].mean(0), atol=1e-5
    )


def test_features_are_cached_per_file_and_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = Features(default_model_dir(), "int8", threads=1)
    seqs = [_seq(30, 3), _seq(45, 4)]
    first = cached_features(model, seqs, tmp_path)

    def no_model_time(self: Features, seqs: list[str]) -> dict[str, np.ndarray]:
        raise AssertionError("a cached split ran the model again")

    monkeypatch.setattr(Features, "run", no_model_time)
    again = cached_features(model, seqs, tmp_path)
    for rule in RULES:
        np.testing.assert_array_equal(again[rule], first[rule], err_msg=rule)
    # a rule the file has no entry for (one added since) makes the split run again, never a stale read
    monkeypatch.setitem(RULES, "mean + a new rule", lambda s, f, t, r: s)
    with pytest.raises(AssertionError, match="ran the model again"):
        cached_features(model, seqs, tmp_path)
