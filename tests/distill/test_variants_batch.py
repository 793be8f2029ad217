"""The int8 and fp16 files give a sequence the same vectors alone and in a padded mixed-length batch."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from protembed import tokenizer
from protembed_distill.config import StudentConfig
from protembed_distill.export.onnx import export_onnx, onnx_outputs, parity
from protembed_distill.export.static_int8 import ActivationRange, calibrate, weight_matmuls
from protembed_distill.export.variants import batch_dependence, convert_fp16, quantize_int8, variant_quality
from protembed_distill.student.model import Student

torch.set_num_threads(1)


def _sequences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    aa = tokenizer.STANDARD_RESIDUES
    return ["".join(rng.choice(aa) for _ in range(rng.choice([3, 9, 40, 120, 250]))) for _ in range(n)]


@pytest.fixture(scope="module")
def student() -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(layers=2, d_model=32, heads=4, ffn=64, pool_dim=48, dropout=0.0, max_length=300)
    return Student(cfg, {"t": 5}).eval()


@pytest.fixture(scope="module")
def fp32(student: Student, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("variants") / "model.onnx"
    export_onnx(student, path)
    return path


def test_static_int8_is_batch_independent_where_dynamic_is_not(fp32: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    seqs = _sequences(24, seed=1)
    static = tmp_path / "static.onnx"
    quantize_int8(fp32, static, _sequences(32, seed=2))
    dynamic = tmp_path / "dynamic.onnx"
    quantize_dynamic(
        str(fp32), str(dynamic), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
    )
    assert batch_dependence(fp32, seqs) <= 1e-5
    assert batch_dependence(static, seqs) <= 1e-4
    # The measurement sees what the static scales remove: one scale per padded batch moves the vectors.
    assert batch_dependence(dynamic, seqs) > 1e-3


def test_static_int8_stays_close_to_fp32(fp32: Path, tmp_path: Path) -> None:
    static = tmp_path / "static.onnx"
    quantize_int8(fp32, static, _sequences(32, seed=2))
    held_out = _sequences(40, seed=9)
    quality = variant_quality(onnx_outputs(fp32, held_out), onnx_outputs(static, held_out))
    # int8 rounding, not a wrong graph (a wrong scale or a lost bias gives cosines far below this)
    assert min(c["min"] for c in quality["cosine_to_fp32"].values()) > 0.99, quality
    graph = onnx.load(str(static)).graph
    ops = [n.op_type for n in graph.node]
    fp32_graph = onnx.load(str(fp32))
    assert ops.count("MatMulIntegerToFloat") == ops.count("QuantizeLinear") == len(weight_matmuls(fp32_graph))
    assert "DynamicQuantizeLinear" not in ops
    # 7-bit GEMM weights: ONNX Runtime's AVX2 (no VNNI) kernel saturates on 255 x 127 x 2, on any such host
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    gemm_weights = [inits[n.input[1]] for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert gemm_weights and max(int(np.abs(w.astype(np.int32)).max()) for w in gemm_weights) == 63
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    # Outputs read float tensors: quantizing the pooled vector or residue states would round them.
    assert all(produced_by[o.name] not in ("DequantizeLinear", "QuantizeLinear") for o in graph.output)


def test_calibration_runs_each_sequence_alone(fp32: Path) -> None:
    a, b = _sequences(2, seed=5)
    both, first, second = calibrate(fp32, [a, b]), calibrate(fp32, [a]), calibrate(fp32, [b])
    for name, r in both.items():
        assert r.low == min(first[name].low, second[name].low)
        assert r.high == max(first[name].high, second[name].high)
    with pytest.raises(ValueError, match="calibration sequences"):
        calibrate(fp32, [])


def test_activation_range_always_represents_zero() -> None:
    scale, zero_point = ActivationRange(0.5, 2.0).scale_zero_point()
    assert zero_point == 0 and scale == pytest.approx(2.0 / 255)
    scale, zero_point = ActivationRange(-3.0, -1.0).scale_zero_point()
    assert zero_point == 255 and scale == pytest.approx(3.0 / 255)
    scale, zero_point = ActivationRange(-1.0, 1.0).scale_zero_point()
    assert round(-1.0 / scale) + zero_point == 0 and np.isclose(scale * (255 - zero_point), 1.0, atol=scale)


def test_fp16_is_batch_independent(student: Student, tmp_path: Path) -> None:
    path = tmp_path / "model.fp16.onnx"
    convert_fp16(student, path)
    assert parity(student, path) < 0.05
    assert batch_dependence(path, _sequences(24, seed=1)) <= 1e-4
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Softmax") == 2  # one per layer, each between Casts to and from float32
