"""The per-residue head (ResidueAdapter): batch independence in PyTorch and in every exported variant,
per-protein outputs untouched, weights readable back from the ONNX file, and its trainer (learns,
checkpoints, resumes)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from protembed import tokenizer
from protembed_distill.config import ResidueAdapterConfig, StudentConfig
from protembed_distill.export.onnx import export_onnx, onnx_outputs, parity
from protembed_distill.export.variants import batch_dependence, convert_fp16, quantize_int8, variant_quality
from protembed_distill.student.model import Student
from protembed_distill.student.onnx_weights import onnx_state_dict
from protembed_distill.train.residue_adapter import AdapterTrainer, trunk_fingerprint

torch.set_num_threads(1)
ADAPTER = ResidueAdapterConfig(width=24, kernel=5, embed=8)


def _sequences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    aa = tokenizer.STANDARD_RESIDUES
    return ["".join(rng.choice(aa) for _ in range(rng.choice([3, 9, 40, 120]))) for _ in range(n)]


def _students() -> tuple[Student, Student]:
    """The same trunk without and with an adapter (random adapter weights)."""
    torch.manual_seed(0)
    cfg = StudentConfig(layers=2, d_model=32, heads=4, ffn=64, pool_dim=48, dropout=0.0, max_length=200)
    plain = Student(cfg, {"t": 5}).eval()
    with_adapter = Student(cfg.model_copy(update={"residue_adapter": ADAPTER}), {"t": 5}).eval()
    missing, unexpected = with_adapter.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("residue_adapter.") for k in missing)
    return plain, with_adapter


@pytest.fixture(scope="module")
def students() -> tuple[Student, Student]:
    return _students()


def test_adapter_changes_only_the_residue_output(students: tuple[Student, Student]) -> None:
    plain, adapted = students
    enc = tokenizer.batch_encode(_sequences(6, seed=1))
    ids, mask = torch.from_numpy(enc.input_ids).long(), torch.from_numpy(enc.attention_mask)
    with torch.no_grad():
        a, b = plain(ids, mask), adapted(ids, mask)
    for name in ("student", "teacher_t", "trunk_states"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert b["residue_states"].shape == (*ids.shape, ADAPTER.width) and adapted.residue_dim == ADAPTER.width
    assert a["residue_states"].shape[-1] == plain.residue_dim == 32


def test_adapter_gives_a_sequence_the_same_features_alone_and_padded(
    students: tuple[Student, Student],
) -> None:
    """Masked before each convolution: residues near the end see zeros past it, as alone. Without the
    mask, the padded positions' trunk states would leak into the last kernel // 2 residues."""
    _, adapted = students
    _assert_alone_equals_padded(adapted, _sequences(8, seed=3))


def _assert_alone_equals_padded(model: Student, seqs: list[str]) -> None:
    enc = tokenizer.batch_encode(seqs)
    ids, mask = torch.from_numpy(enc.input_ids).long(), torch.from_numpy(enc.attention_mask)
    with torch.no_grad():
        batch = model(ids, mask)["residue_states"]
        for r, s in enumerate(seqs):
            one = torch.from_numpy(tokenizer.encode(s)).long()[None]
            alone = model(one, torch.ones_like(one))["residue_states"][0]
            torch.testing.assert_close(batch[r, : len(s)], alone, rtol=0, atol=2e-5)


def test_exported_variants_with_an_adapter_are_batch_independent_and_readable(
    students: tuple[Student, Student], tmp_path: Path
) -> None:
    _, adapted = students
    fp32 = tmp_path / "model.onnx"
    export_onnx(adapted, fp32)
    assert parity(adapted, fp32) < 1e-4
    seqs = _sequences(16, seed=4)
    int8, fp16 = tmp_path / "model.int8.onnx", tmp_path / "model.fp16.onnx"
    quantize_int8(fp32, int8, _sequences(24, seed=5))
    convert_fp16(adapted, fp16)  # the adapter stays float32 inside the fp16 file
    for path in (fp32, int8, fp16):
        assert batch_dependence(path, seqs) <= 1e-4, path.name
    ref = onnx_outputs(fp32, seqs)
    assert ref["residue_states"][0].shape[1] == ADAPTER.width
    for path in (int8, fp16):
        cos = variant_quality(ref, onnx_outputs(path, seqs))["cosine_to_fp32"]["residue_states"]
        assert cos["min"] > 0.99, (path.name, cos)
    # the weights come back out of the file (how student_from_folder rebuilds the PyTorch model)
    state = onnx_state_dict(fp32)
    for name, value in adapted.state_dict().items():
        if name.startswith("residue_adapter."):
            np.testing.assert_array_equal(state[name].numpy(), value.numpy(), err_msg=name)


def _window_targets(seqs: list[str]) -> dict[str, list[np.ndarray]]:
    """A fixed function of each residue's +-1 window, as a residue CNN's states are."""
    proj = np.random.default_rng(0).normal(size=(tokenizer.VOCAB_SIZE * 3, 6)).astype(np.float32)
    out = []
    for s in seqs:
        ids = np.concatenate([[0], tokenizer.encode(s), [0]])
        onehot = np.eye(tokenizer.VOCAB_SIZE, dtype=np.float32)[ids]
        window = np.concatenate([onehot[:-2], onehot[1:-1], onehot[2:]], axis=1)
        out.append(np.tanh(window @ proj).astype(np.float16))
    return {"near": out}


def test_trainer_learns_teacher_states_checkpoints_and_resumes(tmp_path: Path) -> None:
    """Targets a fixed function of the local sequence (as a residue CNN's states are): the validation
    loss falls, each epoch is checkpointed, and a new trainer resumes at the saved epoch and step."""
    plain, _ = _students()
    targets = _window_targets
    train, val = _sequences(40, seed=6), _sequences(8, seed=7)
    run = tmp_path / "run"
    run.mkdir()
    trainer = AdapterTrainer(plain, ADAPTER, {"near": 6}, run, lr=1e-2, epochs=6, batch_tokens=256)
    trainer.fit(train, targets(train), val, targets(val))
    losses = [h["val_loss"] for h in trainer.history]
    assert losses[-1] < 0.6 * losses[0] and losses[-1] < 0.5, losses  # unit-variance targets: 1 = no fit
    assert trainer.history[-1]["val_residue_cosine"]["near"] > 0.7
    again = AdapterTrainer(plain, ADAPTER, {"near": 6}, run, lr=1e-2, epochs=7, batch_tokens=256)
    assert again.resume() and (again.epoch, again.step) == (6, trainer.step)
    for name, value in trainer.adapter.state_dict().items():
        torch.testing.assert_close(again.adapter.state_dict()[name], value)
    again.fit(train, targets(train), val, targets(val))  # one more epoch, not seven
    assert [h["epoch"] for h in again.history] == [1, 2, 3, 4, 5, 6, 7]


def test_a_head_continues_from_a_kept_head_on_a_moved_trunk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--init-head: a continued trunk's head starts from the shipped one (adapter, training heads and
    target statistics), so it begins where that head ended instead of at a fresh head's loss, and the
    checkpoint (then the card) says which head it continued; a head of another shape is refused."""
    trunk, _ = _students()
    train, val = _sequences(40, seed=6), _sequences(8, seed=7)
    (tmp_path / "kept").mkdir()
    kept = AdapterTrainer(trunk, ADAPTER, {"near": 6}, tmp_path / "kept", lr=1e-2, epochs=6, batch_tokens=256)
    kept.fit(train, _window_targets(train), val, _window_targets(val))
    moved, _ = _students()
    with torch.no_grad():  # a held continuation: the trunk's states move a little
        for p in moved.parameters():
            p.add_(0.01 * torch.randn_like(p))

    def trainer(name: str) -> AdapterTrainer:
        (tmp_path / name).mkdir()
        return AdapterTrainer(
            moved, ADAPTER, {"near": 6}, tmp_path / name, lr=3e-3, epochs=1, batch_tokens=256
        )

    fresh, continued = trainer("fresh"), trainer("continued")
    continued.start_from(kept.checkpoint)
    at_start = continued.validate(val, continued.trunk_states(val), _window_targets(val))["val_loss"]
    assert at_start < 1.5 * kept.history[-1]["val_loss"], (at_start, kept.history[-1])
    capsys.readouterr()
    for t in (fresh, continued):
        t.fit(train, _window_targets(train), val, _window_targets(val))
    # the continuation logs the kept head's held-out score on this trunk first (its epoch 0), once
    epoch0 = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"epoch": 0' in x]
    assert [r["val_loss"] for r in epoch0] == [at_start]
    assert continued.history[-1]["val_loss"] < 0.7 * fresh.history[-1]["val_loss"]
    saved = torch.load(continued.checkpoint, weights_only=False)
    assert saved["init_head"] == {
        "path": str(kept.checkpoint),
        "trunk": trunk_fingerprint(trunk),
        "epochs": 6,
    }
    assert saved["trunk"] == trunk_fingerprint(moved) != saved["init_head"]["trunk"]
    again = AdapterTrainer(moved, ADAPTER, {"near": 6}, tmp_path / "continued", epochs=2)
    assert again.resume(kept.checkpoint) and again.init_head == saved["init_head"]  # still says so
    with pytest.raises(
        ValueError, match=r"continues .*kept.*adapter\.pt, not from scratch: use another --run"
    ):
        again.resume()  # a rerun without --init-head would finish another recipe's head
    wider = ADAPTER.model_copy(update={"width": 32})
    (tmp_path / "wider").mkdir()
    with pytest.raises(ValueError, match=r"--init-head .*adapter\.pt: a head of .*'width': 24"):
        AdapterTrainer(moved, wider, {"near": 6}, tmp_path / "wider").start_from(kept.checkpoint)


def test_a_head_is_retrained_on_the_trunk_of_a_model_that_has_one() -> None:
    """The shipped model has a head: training takes its trunk alone (same per-protein outputs), and the
    trunk's fingerprint, kept in the checkpoint, ties an exported head to the trunk it was trained on."""
    from protembed.settings import default_model_dir
    from protembed_distill.export.reference_vectors import student_from_folder
    from protembed_distill.train.residue_adapter import trunk_fingerprint, trunk_of

    folder = default_model_dir()
    full = student_from_folder(folder)
    trunk = trunk_of(folder)
    assert full.residue_adapter is not None and trunk.residue_adapter is None
    ids = torch.from_numpy(tokenizer.encode("MKTAYIAKQRQISFVKSHFSRQ")).long()[None]
    with torch.no_grad():
        a, b = full(ids, torch.ones_like(ids)), trunk(ids, torch.ones_like(ids))
    torch.testing.assert_close(a["student"], b["student"], rtol=0, atol=0)
    torch.testing.assert_close(a["trunk_states"], b["residue_states"], rtol=0, atol=0)
    assert trunk_fingerprint(trunk) == trunk_fingerprint(full)  # the head is not part of it
    with torch.no_grad():
        trunk.norm.weight.add_(1e-3)
    assert trunk_fingerprint(trunk) != trunk_fingerprint(full)


def test_export_stage_needs_only_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept head (distill/heads/*.pt copied into an empty run folder) ships with ``--stage export``
    alone: the run's sequence list belongs to the training stages, and a kept head has none."""
    from protembed.settings import default_model_dir
    from protembed_distill.train import residue_adapter

    calls: list[tuple[Path, Path, str]] = []
    monkeypatch.setattr(
        residue_adapter,
        "export_into",
        lambda folder, ck, version, corpus, evals, threads: (
            calls.append((folder, ck, version)) or {"version": version, "files": []}
        ),
    )
    run = tmp_path / "kept"
    run.mkdir()
    evals = tmp_path / "eval"
    (evals / "set").mkdir(parents=True)
    model = default_model_dir()
    argv = ["--stage", "export", "--run", str(run), "--model", str(model), "--eval-dir", str(evals)]
    assert residue_adapter.main([*argv, "--version", "9.9.9"]) == 0
    assert calls == [(model, run / "adapter.pt", "9.9.9")]
    assert not (run / "sequences.txt").exists()


def test_a_dilated_head_is_batch_independent_in_pytorch_and_onnx(tmp_path: Path) -> None:
    """Residual convolutions past the first (dilated here) must also see zeros at padding: without the
    mask between them, the second one's output at padded positions would leak into the third's input."""
    plain, _ = _students()
    cfg = ADAPTER.model_copy(update={"residual_dilations": [1, 2, 4]})
    deep = Student(plain.cfg.model_copy(update={"residue_adapter": cfg}), {"t": 5})
    deep.load_state_dict(plain.state_dict(), strict=False)
    deep.eval()
    adapter = deep.residue_adapter
    assert adapter is not None and [n for n, _ in adapter.named_children() if n.startswith("conv")] == [
        "conv1",
        "conv2",
        "conv3",
        "conv4",
    ]
    _assert_alone_equals_padded(deep, _sequences(8, seed=8))
    fp32 = tmp_path / "deep.onnx"
    export_onnx(deep, fp32)
    assert parity(deep, fp32) < 1e-4
    assert batch_dependence(fp32, _sequences(16, seed=9)) <= 1e-4
    state = onnx_state_dict(fp32)
    np.testing.assert_array_equal(
        state["residue_adapter.conv4.weight"].numpy(), adapter.conv4.weight.detach().numpy()
    )


def test_fill_targets_stores_the_same_states_whatever_the_teacher_batch(tmp_path: Path) -> None:
    """UniRep-1900 runs its targets in large batches (a runtime option, for speed on a CPU): the residue
    states kept must be those of small batches, sequence by sequence, for both teachers."""
    from protembed_distill.teachers.fetch import is_fetched
    from protembed_distill.train.residue_adapter import TEACHERS, fill_targets, read_targets

    missing = [t for t in TEACHERS if not is_fetched(t)]
    if missing:
        pytest.skip(f"teacher weights not fetched: run `protembed teachers fetch {' '.join(missing)}`")
    seqs = _sequences(6, seed=3)
    fill_targets(tmp_path / "small", seqs, batch_tokens=128, threads=1)  # one or two sequences a batch
    fill_targets(tmp_path / "large", seqs, batch_tokens=65536, threads=1)  # all six in one batch
    small, large = read_targets(tmp_path / "small", seqs), read_targets(tmp_path / "large", seqs)
    assert sorted(small) == sorted(TEACHERS)
    for name in TEACHERS:
        assert [len(a) for a in small[name]] == [len(s) for s in seqs]
        for a, b in zip(small[name], large[name], strict=True):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3, rtol=2e-3)
