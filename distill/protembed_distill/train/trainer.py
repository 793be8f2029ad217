"""Training loop: token-budget batches, AdamW + warmup/cosine, checkpoints and exact resume, per-epoch
validation, early stopping, JSONL/CSV logs, DDP under torchrun (WORLD_SIZE > 1).

Resume is exact, not approximate: the batch plan of an epoch is a pure function of (seed, epoch), and a
checkpoint stores model, optimizer, schedule position, RNG, and the position inside the epoch, so a run
interrupted at step k and resumed ends with the same weights as an uninterrupted one (tested).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from protembed.errors import ProtembedError
from protembed.tokenizer import batch_encode
from protembed_distill.config import DistillConfig, StudentConfig
from protembed_distill.data import Dataset, Item
from protembed_distill.losses import Standardizer, embedding_loss, residue_loss
from protembed_distill.student import Student
from protembed_distill.teacher_cache import EmbeddingStore, cache_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "TeacherTargets",
    "TrainResult",
    "load_checkpoint",
    "load_targets",
    "make_batches",
    "set_threads",
    "student_from_checkpoint",
    "train",
]

CHECKPOINT_FORMAT = "protembed-distill-ckpt/1"
_RESIDUE_STAT_ROWS = 200_000  # residues sampled to fit per-residue standardization
_RESIDUE_RAM_BYTES = 8 << 30  # per-residue caches up to this size are read into memory once


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------
# data -> tensors
@dataclass
class TeacherTargets:
    """Standardized per-protein targets for one split, plus per-residue access where configured."""

    per_protein: dict[str, Tensor]  # name -> [N, dim] standardized
    raw: dict[str, Tensor]  # name -> [N, dim] original units (for validation cosine)
    residue_spans: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class LoadedTargets:
    train: TeacherTargets
    val: TeacherTargets
    standardizers: dict[str, Standardizer]
    residue_standardizers: dict[str, Standardizer]
    teacher_meta: dict[str, dict[str, Any]]
    residue_stores: dict[str, EmbeddingStore]
    # Each per-residue cache's rows: in memory when they fit _RESIDUE_RAM_BYTES (one h5py read per
    # sequence per step would starve a GPU), else the h5py dataset itself.
    residue_data: dict[str, np.ndarray | h5py.Dataset] = field(default_factory=dict)

    def close(self) -> None:
        for s in self.residue_stores.values():
            s.close()


def load_targets(cfg: DistillConfig, ds: Dataset) -> LoadedTargets:
    cache_dir = cfg.teacher_cache_dir()
    tr_keys = [i.key for i in ds.train]
    va_keys = [i.key for i in ds.val]
    train = TeacherTargets({}, {})
    val = TeacherTargets({}, {})
    stdz: dict[str, Standardizer] = {}
    rstdz: dict[str, Standardizer] = {}
    meta: dict[str, dict[str, Any]] = {}
    rstores: dict[str, EmbeddingStore] = {}
    rdata: dict[str, np.ndarray | h5py.Dataset] = {}
    for t in cfg.teachers:
        path = cache_path(cache_dir, t)
        store = EmbeddingStore(path, mode="r")
        keep_open = False
        try:
            meta[t.name] = store.meta
            tr = torch.from_numpy(store.per_protein(tr_keys))
            va = torch.from_numpy(store.per_protein(va_keys))
            s = Standardizer.fit(tr)
            stdz[t.name] = s
            train.per_protein[t.name], train.raw[t.name] = s.apply(tr), tr
            val.per_protein[t.name], val.raw[t.name] = s.apply(va), va
            if t.per_residue:
                train.residue_spans[t.name] = store.residue_spans(tr_keys)
                val.residue_spans[t.name] = store.residue_spans(va_keys)
                on_disk = store.residues()
                data = on_disk[()] if on_disk.size * on_disk.dtype.itemsize <= _RESIDUE_RAM_BYTES else on_disk
                # A strided read is one cheap selection and samples all lengths evenly (rows are
                # stored in length-sorted embedding order, so a prefix would be biased).
                step = max(1, int(data.shape[0]) // _RESIDUE_STAT_ROWS)
                sample = torch.from_numpy(np.asarray(data[::step], dtype=np.float32))
                rstdz[t.name] = Standardizer.fit(sample)
                rstores[t.name] = store
                rdata[t.name] = data
                keep_open = True
        finally:
            if not keep_open:
                store.close()
    return LoadedTargets(train, val, stdz, rstdz, meta, rstores, rdata)


def make_batches(lengths: Sequence[int], batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed, shuffled batches with rows x longest <= batch_tokens; a pure function of
    (lengths, seed, epoch). Sorting within random pools of ~64 batches keeps padding low while
    still mixing which sequences meet in a batch from epoch to epoch."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mean_len = max(1, int(sum(lengths) / max(1, len(lengths))))
    pool = max(1, 64 * batch_tokens // mean_len)
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batch: list[int] = []
        longest = 0
        for i in chunk:
            new_longest = max(longest, lengths[i])
            if batch and new_longest * (len(batch) + 1) > batch_tokens:
                batches.append(batch)
                batch, new_longest = [], lengths[i]
            batch.append(i)
            longest = new_longest
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def collate(items: Sequence[Item], idx: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
    enc = batch_encode([items[i].sequence for i in idx])
    return (torch.from_numpy(enc.input_ids).to(device), torch.from_numpy(enc.attention_mask).to(device))


def residue_targets(
    data: np.ndarray | h5py.Dataset,
    spans: tuple[np.ndarray, np.ndarray],
    idx: Sequence[int],
    width: int,
    stdz: Standardizer,
    device: torch.device,
) -> Tensor:
    """Standardized per-residue teacher states [B, width, dim] (pads hold the standardized zero; losses
    mask them). Gathered in the cache's float16 and standardized on ``device``: on a GPU, the float32
    arithmetic over B x width x dim values on the CPU was most of a training step."""
    offsets, lengths = spans
    out = np.zeros((len(idx), width, data.shape[1]), dtype=data.dtype)
    for row, i in enumerate(idx):
        o, n = int(offsets[i]), int(lengths[i])
        out[row, :n] = data[o : o + n]
    return stdz.apply(torch.from_numpy(out).to(device).float())


@dataclass
class Batch:
    """One training step's inputs on the device: token ids, mask, standardized per-protein targets and
    per-residue targets by teacher."""

    ids: Tensor
    mask: Tensor
    targets: dict[str, Tensor]
    residue_targets: dict[str, Tensor]


def prepare_batch(
    ds: Dataset, loaded: LoadedTargets, cfg: DistillConfig, idx: Sequence[int], device: torch.device
) -> Batch:
    ids, mask = collate(ds.train, idx, device)
    targets = {t.name: loaded.train.per_protein[t.name][idx].to(device) for t in cfg.teachers}
    residue: dict[str, Tensor] = {}
    if cfg.loss.per_residue > 0:
        for t in cfg.teachers:
            if t.name in loaded.residue_data:
                residue[t.name] = residue_targets(
                    loaded.residue_data[t.name],
                    loaded.train.residue_spans[t.name],
                    idx,
                    ids.shape[1],
                    loaded.residue_standardizers[t.name],
                    device,
                )
    return Batch(ids, mask, targets, residue)


# ---------------------------------------------------------------------------------------------------
# schedule, checkpoints
def _init_weights(
    model: Student, cfg: DistillConfig, teacher_dims: dict[str, int], standardizers: dict[str, Standardizer]
) -> None:
    path = Path(cfg.optim.init_from or "")
    if path.is_dir():  # an exported model folder: the weights in its ONNX graph (onnx_weights.py)
        from protembed_distill.onnx_weights import load_model_folder_weights

        try:
            load_model_folder_weights(model, path, cfg.student.model_dump(mode="json"), teacher_dims)
        except (ValueError, ProtembedError) as exc:
            raise ValueError(f"optim.init_from: {exc}") from exc
        # Exported heads answer in teacher units (export folds the standardization in); training
        # predicts standardized targets, by this run's training-set statistics.
        with torch.no_grad():
            model.unfold_standardization({n: (s.mean, s.std) for n, s in standardizers.items()})
        return
    if not path.is_file():
        raise ValueError(f"optim.init_from: {path} is neither a checkpoint file nor a model folder")
    ckpt = load_checkpoint(path)
    mismatch = _mismatch(ckpt, cfg, teacher_dims)
    if mismatch:
        raise ValueError(f"optim.init_from: {path} was trained with {mismatch}")
    model.load_state_dict(ckpt["model"])


def _mismatch(ckpt: dict[str, Any], cfg: DistillConfig, teacher_dims: dict[str, int]) -> str | None:
    """Why a checkpoint's weights cannot seed this run's model, or None when they can."""
    if ckpt["student_config"] != cfg.student.model_dump(mode="json"):
        return "a different student than [student] describes"
    if ckpt["teacher_dims"] != teacher_dims:
        return f"teacher heads {ckpt['teacher_dims']}, this run needs {teacher_dims}"
    return None


def lr_factor(step: int, warmup: int, total: int, time_fraction: float = 0.0) -> float:
    """Linear warmup, then cosine decay to 2% of the peak. Progress is the larger of the step fraction
    and ``time_fraction`` (elapsed / optim.time_budget_s), so a run cut by its time budget still ends
    with a decayed learning rate instead of stopping at the peak."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
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


# ---------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    step: int
    finished: bool  # False when stopped by stop_after_steps (simulated interruption)
    val: dict[str, Any]
    train_residues_per_s: float
    history: list[dict[str, Any]]


class _Logger:
    def __init__(self, run_dir: Path, enabled: bool, echo: bool) -> None:
        self.enabled, self.echo = enabled, echo
        self.jsonl = run_dir / "train.jsonl"
        self.csv = run_dir / "train.csv"

    def event(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.jsonl.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.echo:
            print(json.dumps(rec), file=sys.stderr, flush=True)

    def epoch_row(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.csv.is_file()
        with self.csv.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)


def _device(cfg: DistillConfig, local_rank: int) -> torch.device:
    if cfg.run.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.run.device)


@torch.no_grad()
def evaluate(
    model: Student,
    items: Sequence[Item],
    targets: TeacherTargets,
    loaded: LoadedTargets,
    cfg: DistillConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Cosine to each teacher on held-out sequences (original units and standardized) and val loss."""
    model.eval()
    names = model.teacher_names
    preds: dict[str, list[Tensor]] = {n: [] for n in names}
    order: list[int] = []
    res_cos: dict[str, list[float]] = {n: [] for n in loaded.residue_stores}
    for batch in make_batches([len(i.sequence) for i in items], cfg.optim.batch_tokens, 0, 0):
        ids, mask = collate(items, batch, device)
        out = model(ids, mask)
        for n in names:
            preds[n].append(out[f"teacher_{n}"].float().cpu())
        for n, data in loaded.residue_data.items():
            tgt = residue_targets(
                data, targets.residue_spans[n], batch, ids.shape[1], loaded.residue_standardizers[n], device
            )
            pr = model.residue_predictions(out["residue_states"])[n].float()
            c = torch.nn.functional.cosine_similarity(pr, tgt, dim=-1)
            res_cos[n].append(float((c * mask).sum() / mask.sum()) * float(mask.sum()))
        order.extend(batch)
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    result: dict[str, Any] = {"val_cosine": {}, "val_cosine_std": {}, "val_loss_by_teacher": {}}
    total = 0.0
    wsum = sum(t.weight for t in cfg.teachers)
    for t in cfg.teachers:
        p = torch.cat(preds[t.name])[inv]
        tgt = targets.per_protein[t.name]
        raw_pred = loaded.standardizers[t.name].invert(p)
        result["val_cosine"][t.name] = float(
            torch.nn.functional.cosine_similarity(raw_pred, targets.raw[t.name], dim=-1).mean()
        )
        result["val_cosine_std"][t.name] = float(torch.nn.functional.cosine_similarity(p, tgt, dim=-1).mean())
        loss, _ = embedding_loss(p, tgt, cfg.loss, loaded.standardizers[t.name])
        result["val_loss_by_teacher"][t.name] = float(loss)
        total += t.weight / wsum * float(loss)
    if res_cos:
        n_res = sum(len(i.sequence) for i in items)
        result["val_residue_cosine_std"] = {n: sum(v) / n_res for n, v in res_cos.items()}
    result["val_loss"] = total
    model.train()
    return result


def train(
    cfg: DistillConfig,
    ds: Dataset,
    *,
    run_dir: Path | None = None,
    stop_after_steps: int | None = None,
    resume: bool = True,
    echo: bool = True,
) -> TrainResult:
    """Train (or resume) a student from the cached teacher embeddings of ``ds``."""
    run_dir = Path(run_dir or cfg.run.dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(cfg, local_rank)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    is_main = rank == 0
    ckpt_dir = run_dir / "checkpoints"
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = _Logger(run_dir, is_main, echo)

    loaded = load_targets(cfg, ds)
    try:
        return _train_loop(
            cfg, ds, loaded, run_dir, ckpt_dir, device, world, rank, is_main, log, stop_after_steps, resume
        )
    finally:
        loaded.close()


def _train_loop(
    cfg: DistillConfig,
    ds: Dataset,
    loaded: LoadedTargets,
    run_dir: Path,
    ckpt_dir: Path,
    device: torch.device,
    world: int,
    rank: int,
    is_main: bool,
    log: _Logger,
    stop_after_steps: int | None,
    resume: bool,
) -> TrainResult:
    torch.manual_seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    teacher_dims = {t.name: int(loaded.train.per_protein[t.name].shape[1]) for t in cfg.teachers}
    residue_dims = {n: int(s.residues().shape[1]) for n, s in loaded.residue_stores.items()}
    model = Student(cfg.student, teacher_dims, residue_dims).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "pos" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n and "pos" not in n)
    ]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.optim.lr,
        betas=(0.9, 0.98),
    )
    lengths = [len(i.sequence) for i in ds.train]
    per_epoch = len(make_batches(lengths, cfg.optim.batch_tokens, cfg.run.seed, 0)) // world
    if per_epoch == 0:
        raise ValueError(f"fewer training batches ({per_epoch * world}) than processes ({world})")
    total_steps = cfg.optim.max_steps or per_epoch * cfg.optim.epochs

    def set_lr() -> float:
        budget = cfg.optim.time_budget_s
        frac = state["train_seconds"] / budget if budget else 0.0
        lr = cfg.optim.lr * lr_factor(state["step"], cfg.optim.warmup_steps, total_steps, frac)
        for group in opt.param_groups:
            group["lr"] = lr
        return lr

    state: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "best_val": float("inf"),
        "bad_epochs": 0,
        "history": [],
        "best_epoch": -1,
        "train_seconds": 0.0,
        "train_residues": 0,
    }
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        mismatch = _mismatch(ckpt, cfg, teacher_dims)
        if mismatch:
            raise ValueError(f"{last_path} was trained with {mismatch}; use another run.dir or delete it")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state.update(ckpt["state"])
        _set_rng_state(ckpt["rng"])
        log.event({"kind": "resume", "step": state["step"], "epoch": state["epoch"], "batch": state["batch"]})
    else:
        if cfg.optim.init_from is not None:
            _init_weights(model, cfg, teacher_dims, loaded.standardizers)
        log.event(
            {
                "kind": "start",
                "config": cfg.model_dump(mode="json"),
                "data": ds.stats,
                "parameters": model.parameter_count(),
                "total_steps": total_steps,
                "batches_per_epoch": per_epoch,
                "device": str(device),
                "world_size": world,
                "threads": torch.get_num_threads(),
            }
        )

    net: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(path: Path) -> None:
        if not is_main:
            return
        _atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": cfg.model_dump(mode="json"),
                "student_config": cfg.student.model_dump(mode="json"),
                "teacher_dims": teacher_dims,
                "residue_dims": residue_dims,
                "standardizers": {n: (s.mean, s.std) for n, s in loaded.standardizers.items()},
                "teacher_meta": loaded.teacher_meta,
                "teacher_weights": {t.name: t.weight for t in cfg.teachers},
                "data_stats": ds.stats,
                "val_sequences": [i.sequence for i in ds.val],
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "state": state,
                "rng": _rng_state(),
            },
            path,
        )

    use_amp = cfg.optim.amp and device.type == "cuda"
    wsum = sum(t.weight for t in cfg.teachers)
    t_start = time.perf_counter()
    model.train()
    stopped_early = interrupted = False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prefetch") as prefetch:
        while state["epoch"] < cfg.optim.epochs and not (
            cfg.optim.max_steps and state["step"] >= cfg.optim.max_steps
        ):
            epoch = state["epoch"]
            batches = make_batches(lengths, cfg.optim.batch_tokens, cfg.run.seed, epoch)
            batches = batches[: per_epoch * world][rank::world]  # equal count per rank, no DDP hang
            t_epoch, res_epoch, loss_sum, n_loss = time.perf_counter(), 0, 0.0, 0
            # The next batch is prepared on a worker thread while this one runs (tokenizing and gathering
            # per-residue targets is CPU work that would otherwise leave a GPU idle between steps).
            pending = (
                prefetch.submit(prepare_batch, ds, loaded, cfg, batches[state["batch"]], device)
                if (state["batch"] < len(batches))
                else None
            )
            while pending is not None:
                b = pending.result()
                nxt = state["batch"] + 1
                pending = (
                    prefetch.submit(prepare_batch, ds, loaded, cfg, batches[nxt], device)
                    if nxt < len(batches)
                    else None
                )
                ids, mask = b.ids, b.mask
                t0 = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    out = net(ids, mask)
                loss = torch.zeros((), device=device)
                parts: dict[str, float] = {}
                for t in cfg.teachers:
                    lt, p = embedding_loss(
                        out[f"teacher_{t.name}"], b.targets[t.name], cfg.loss, loaded.standardizers[t.name]
                    )
                    loss = loss + t.weight / wsum * lt
                    parts.update({f"{t.name}.{k}": v for k, v in p.items()})
                    if t.name in b.residue_targets:
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                            rp = model.residue_predictions(out["residue_states"])[t.name]
                        lr_ = residue_loss(rp, b.residue_targets[t.name], mask, cfg.loss)
                        loss = loss + cfg.loss.per_residue * t.weight / wsum * lr_
                        parts[f"{t.name}.residue"] = float(lr_.detach())
                set_lr()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                opt.step()
                dt = time.perf_counter() - t0
                nres = int(mask.sum())
                state["step"] += 1
                state["batch"] += 1
                state["train_seconds"] += dt
                state["train_residues"] += nres
                res_epoch += nres
                loss_sum += float(loss.detach())
                n_loss += 1
                if state["step"] % cfg.optim.log_every_steps == 0:
                    log.event(
                        {
                            "kind": "step",
                            "step": state["step"],
                            "epoch": epoch,
                            "loss": float(loss.detach()),
                            "lr": opt.param_groups[0]["lr"],
                            "residues_per_s": nres / dt if dt else 0.0,
                            **parts,
                        }
                    )
                if cfg.optim.checkpoint_every_steps and state["step"] % cfg.optim.checkpoint_every_steps == 0:
                    save(last_path)
                over_budget = (
                    cfg.optim.time_budget_s and time.perf_counter() - t_start > cfg.optim.time_budget_s
                )
                if (stop_after_steps is not None and state["step"] >= stop_after_steps) or over_budget:
                    save(last_path)
                    interrupted = not over_budget
                    if over_budget:
                        log.event({"kind": "time_budget", "step": state["step"]})
                    break
                if cfg.optim.max_steps and state["step"] >= cfg.optim.max_steps:
                    break
            if interrupted:
                break
            over = bool(cfg.optim.time_budget_s and time.perf_counter() - t_start > cfg.optim.time_budget_s)
            val = evaluate(model, ds.val, loaded.val, loaded, cfg, device)
            improved = val["val_loss"] < state["best_val"] - 1e-5
            if improved:
                state["best_val"], state["bad_epochs"], state["best_epoch"] = val["val_loss"], 0, epoch
            else:
                state["bad_epochs"] += 1
            rec = {
                "kind": "epoch",
                "epoch": epoch,
                "step": state["step"],
                "train_loss": loss_sum / max(1, n_loss),
                "train_residues_per_s": res_epoch / max(1e-9, time.perf_counter() - t_epoch),
                "lr": opt.param_groups[0]["lr"],
                "elapsed_s": time.perf_counter() - t_start,
                **val,
            }
            state["history"].append(rec)
            log.event(rec)
            flat = {k: v for k, v in rec.items() if not isinstance(v, dict) and k != "kind"}
            for key in ("val_cosine", "val_cosine_std"):
                flat.update({f"{key}_{n}": v for n, v in val[key].items()})
            log.epoch_row(flat)
            state["epoch"], state["batch"] = epoch + 1, 0
            epoch_done_partial = cfg.optim.max_steps and state["step"] >= cfg.optim.max_steps
            if improved:
                save(best_path)
            save(last_path)
            if cfg.optim.patience and state["bad_epochs"] >= cfg.optim.patience:
                stopped_early = True
                log.event({"kind": "early_stop", "epoch": epoch, "best_epoch": state["best_epoch"]})
                break
            if over or epoch_done_partial:
                break
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    last_val = state["history"][-1] if state["history"] else {}
    rate = state["train_residues"] / state["train_seconds"] if state["train_seconds"] else 0.0
    if not interrupted:
        log.event(
            {
                "kind": "done",
                "step": state["step"],
                "early_stopped": stopped_early,
                "best_epoch": state["best_epoch"],
                "train_residues_per_s": rate,
            }
        )
    return TrainResult(
        run_dir, best_path, last_path, state["step"], not interrupted, last_val, rate, state["history"]
    )
