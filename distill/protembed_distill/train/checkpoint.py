"""Checkpoints: written atomically, read back with their format checked, a student rebuilt from one, and
a run's weights seeded from a checkpoint or an exported model folder (``optim.init_from``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from protembed.errors import ProtembedError
from protembed_distill.config import DistillConfig, StudentConfig
from protembed_distill.student.model import Student
from protembed_distill.train.losses import Standardizer

CHECKPOINT_FORMAT = "protembed-distill-ckpt/1"


def init_weights(
    model: Student, cfg: DistillConfig, teacher_dims: dict[str, int], standardizers: dict[str, Standardizer]
) -> None:
    load_weights(model, Path(cfg.optim.init_from or ""), cfg, teacher_dims, standardizers, "optim.init_from")


def load_weights(
    model: Student,
    path: Path,
    cfg: DistillConfig,
    teacher_dims: dict[str, int],
    standardizers: dict[str, Standardizer],
    setting: str,
) -> None:
    """Load a checkpoint or an exported model folder into ``model``; errors name ``setting``."""
    if path.is_dir():  # an exported model folder: the weights in its ONNX graph (onnx_weights.py)
        from protembed_distill.student.onnx_weights import load_model_folder_weights

        try:
            load_model_folder_weights(model, path, cfg.student.model_dump(mode="json"), teacher_dims)
        except (ValueError, ProtembedError) as exc:
            raise ValueError(f"{setting}: {exc}") from exc
        # Exported heads answer in teacher units (export folds the standardization in); training
        # predicts standardized targets, by this run's training-set statistics.
        with torch.no_grad():
            model.unfold_standardization({n: (s.mean, s.std) for n, s in standardizers.items()})
        return
    if not path.is_file():
        raise ValueError(f"{setting}: {path} is neither a checkpoint file nor a model folder")
    ckpt = load_checkpoint(path)
    why = mismatch(ckpt, cfg, teacher_dims)
    if why:
        raise ValueError(f"{setting}: {path} was trained with {why}")
    model.load_state_dict(ckpt["model"])


def mismatch(ckpt: dict[str, Any], cfg: DistillConfig, teacher_dims: dict[str, int]) -> str | None:
    """Why a checkpoint's weights cannot seed this run's model, or None when they can."""
    if ckpt["student_config"] != cfg.student.model_dump(mode="json"):
        return "a different student than [student] describes"
    if ckpt["teacher_dims"] != teacher_dims:
        return f"teacher heads {ckpt['teacher_dims']}, this run needs {teacher_dims}"
    return None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.part")
    torch.save(obj, tmp)
    tmp.replace(path)  # a kill mid-save never leaves a truncated checkpoint behind


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a protembed distillation checkpoint (format {ckpt.get('format')!r})")
    return ckpt


def student_from_checkpoint(ckpt: dict[str, Any]) -> Student:
    scfg = StudentConfig.model_validate(ckpt["student_config"])
    model = Student(scfg, ckpt["teacher_dims"], ckpt["residue_dims"])
    model.load_state_dict(ckpt["model"])
    return model


def blend_checkpoints(start: str | Path, end: str | Path, alpha: float) -> dict[str, Any]:
    """``end`` with its weights moved back towards ``start``: (1 - alpha) * start + alpha * end.

    Interpolating a fine-tuned model's weights with those it started from (Wortsman et al., "Robust
    fine-tuning of zero-shot models", CVPR 2022) keeps much of what the fine-tuning gained while undoing
    much of what it cost elsewhere. Here ``start`` is a continuation's step-0 checkpoint (the bundled
    model, lr 0) and ``end`` its best: the continuation raises the held-out cosine but costs probes on
    sets it does not train towards (reports/distill/cpu_mix.md). Both must be the same student trained on
    the same data (the standardizers, which give the heads their units, must agree); the result is
    ``end``'s checkpoint (config, held-out sequences) with the blended weights and a ``blend`` record.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a, b = load_checkpoint(start), load_checkpoint(end)
    for key in ("student_config", "teacher_dims", "residue_dims"):
        if a[key] != b[key]:
            raise ValueError(f"{start} and {end} differ in {key}: {a[key]} vs {b[key]}")
    for name, (mean, std) in b["standardizers"].items():
        m0, s0 = a["standardizers"].get(name, (None, None))
        if m0 is None or not (torch.equal(m0, mean) and torch.equal(s0, std)):
            raise ValueError(f"{start} and {end} standardize teacher {name!r} differently (different data)")
    blended = {}
    for k, v in b["model"].items():
        # integer buffers (none today) would not interpolate; they are taken from ``end``
        blended[k] = torch.lerp(a["model"][k], v, alpha) if v.is_floating_point() else v
    out = dict(b)
    out["model"] = blended
    out["blend"] = {"start": str(start), "end": str(end), "alpha": alpha}
    return out
