"""The training loop as a small :class:`Trainer` with named steps: token-budget batches, AdamW +
warmup/cosine, checkpoints and exact resume, per-epoch validation, early stopping, JSONL/CSV logs, DDP
under torchrun (WORLD_SIZE > 1). :func:`train` sets up the process and runs one.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from protembed_distill.config import DistillConfig
from protembed_distill.data.dataset import Dataset, Item
from protembed_distill.student.model import Student
from protembed_distill.train.anchor import AnchorTargets, load_anchor, residue_drift
from protembed_distill.train.batches import Batch, collate, epoch_plan, make_batches, prepare_batch
from protembed_distill.train.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_save,
    init_weights,
    load_checkpoint,
    mismatch,
    rng_state,
    set_rng_state,
)
from protembed_distill.train.losses import embedding_loss, residue_loss
from protembed_distill.train.targets import LoadedTargets, TeacherTargets, load_targets, residue_targets

__all__ = [
    "TrainResult",
    "Trainer",
    "evaluate",
    "lr_factor",
    "set_threads",
    "train",
]


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def lr_factor(step: int, warmup: int, total: int, time_fraction: float = 0.0) -> float:
    """Linear warmup, then cosine decay to 2% of the peak. Progress is the larger of the step fraction
    and ``time_fraction`` (elapsed / optim.time_budget_s), so a run cut by its time budget still ends
    with a decayed learning rate instead of stopping at the peak."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))


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


def use_bf16_autocast(cfg: DistillConfig, device: torch.device) -> bool:
    """Whether to train under bf16 autocast: ``optim.amp`` on CUDA, ``optim.cpu_amp`` on a CPU whose
    bfloat16 products run on matrix units (elsewhere PyTorch emulates them, slower than float32)."""
    if device.type == "cuda":
        return cfg.optim.amp
    if device.type != "cpu" or not cfg.optim.cpu_amp:
        return False
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return True
    print(
        "optim.cpu_amp: this CPU has no bfloat16 matrix units (AMX, AVX512-BF16); training in float32",
        file=sys.stderr,
    )
    return False


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
    anchor: AnchorTargets | None = None,
) -> dict[str, Any]:
    """Cosine to each teacher on held-out sequences (original units and standardized) and val loss
    (the teachers' only, comparable across runs with and without an anchor); with an anchor, also the
    pooled vector's cosine and loss to it, and with its per-residue term that term on held-out residues."""
    model.eval()
    names = model.teacher_names
    preds: dict[str, list[Tensor]] = {n: [] for n in names}
    pooled: list[Tensor] = []
    order: list[int] = []
    res_cos: dict[str, list[float]] = {n: [] for n in loaded.residue_stores}
    drift = torch.zeros(2)  # the per-residue anchor term's sums (sse, spread) over every held-out residue
    for batch in make_batches([len(i.sequence) for i in items], cfg.optim.batch_tokens, 0, 0):
        ids, mask = collate(items, batch, device)
        out = model(ids, mask)
        if anchor is not None and anchor.model is not None:
            held = anchor.trunk_states(ids, mask)
            drift += torch.stack(residue_drift(out["trunk_states"], held, mask)).cpu()
        for n in names:
            preds[n].append(out[f"teacher_{n}"].float().cpu())
        if anchor is not None:
            pooled.append(out["student"].float().cpu())
        for n, data in loaded.residue_data.items():
            tgt = residue_targets(
                data, targets.residue_spans[n], batch, ids.shape[1], loaded.residue_standardizers[n], device
            )
            pr = model.residue_predictions(out["trunk_states"])[n].float()
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
    if anchor is not None:
        raw_pred = torch.cat(pooled)[inv]
        p = anchor.standardizer.apply(raw_pred)
        raw = torch.nn.functional.cosine_similarity(raw_pred, anchor.standardizer.invert(anchor.val), dim=-1)
        result["val_anchor_cosine"] = float(raw.mean())
        result["val_anchor_cosine_std"] = float(
            torch.nn.functional.cosine_similarity(p, anchor.val, dim=-1).mean()
        )
        result["val_anchor_loss"] = float(embedding_loss(p, anchor.val, cfg.loss, anchor.standardizer)[0])
    if anchor is not None and anchor.model is not None:
        # share of the anchor's held-out residue-state variance the student has moved away from
        result["val_anchor_residue_loss"] = float(drift[0] / drift[1].clamp(min=1e-12))
    model.train()
    return result


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint (as a dict) and restored on resume."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # position inside the epoch's batch plan
    best_val: float = float("inf")
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    train_seconds: float = 0.0
    train_residues: int = 0


@dataclass
class Placement:
    """Where this process trains: its device, and its rank among ``world`` processes (DDP under torchrun)."""

    device: torch.device
    world: int = 1
    rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class EpochTotals:
    """What one epoch's steps add up to, for its log record."""

    start: float
    residues: int = 0
    loss_sum: float = 0.0
    steps: int = 0


class Trainer:
    """One training run over loaded targets, in named steps: :meth:`build` (model, optimizer, schedule),
    :meth:`resume_or_start`, then :meth:`run`, which repeats :meth:`run_epoch` (each batch a :meth:`step`,
    its loss from :meth:`loss`) and :meth:`end_epoch` (validate, log, checkpoint, stop or go on)."""

    def __init__(
        self,
        cfg: DistillConfig,
        ds: Dataset,
        loaded: LoadedTargets,
        run_dir: Path,
        place: Placement,
        log: _Logger,
    ) -> None:
        self.cfg, self.ds, self.loaded, self.run_dir = cfg, ds, loaded, run_dir
        self.place, self.log = place, log
        self.last_path = run_dir / "checkpoints" / "last.pt"
        self.best_path = run_dir / "checkpoints" / "best.pt"
        self.state = TrainState()
        self.lengths = [len(i.sequence) for i in ds.train]
        self.sources = [i.source for i in ds.train]
        unknown = sorted(set(cfg.data.source_weights) - set(self.sources))
        if unknown:
            raise ValueError(
                f"data.source_weights: {', '.join(unknown)} not among the training sequences' sources "
                f"({', '.join(sorted(set(self.sources)))})"
            )
        self.wsum = sum(t.weight for t in cfg.teachers)
        self.use_amp = use_bf16_autocast(cfg, place.device)
        self.build()

    # --- setting up ---------------------------------------------------------------------------------
    def build(self) -> None:
        """The student, its optimizer (no weight decay on embeddings, positions, biases and norms) and
        the schedule's length; seeded, so every process and every resume builds the same model."""
        cfg, loaded, place = self.cfg, self.loaded, self.place
        torch.manual_seed(cfg.run.seed)
        random.seed(cfg.run.seed)
        self.teacher_dims = {t.name: int(loaded.train.per_protein[t.name].shape[1]) for t in cfg.teachers}
        self.residue_dims = {n: int(s.residues().shape[1]) for n, s in loaded.residue_stores.items()}
        self.model = Student(cfg.student, self.teacher_dims, self.residue_dims).to(place.device)
        self.anchor = load_anchor(
            cfg, self.ds, self.teacher_dims, self.residue_dims, loaded.standardizers, place.device
        )
        decay = [
            p for n, p in self.model.named_parameters() if p.ndim >= 2 and "embed" not in n and "pos" not in n
        ]
        no_decay = [
            p
            for n, p in self.model.named_parameters()
            if not (p.ndim >= 2 and "embed" not in n and "pos" not in n)
        ]
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.optim.lr,
            betas=(0.9, 0.98),
        )
        plan = self.plan(0)
        self.per_epoch = len(plan) // place.world
        if self.per_epoch == 0:
            raise ValueError(f"fewer training batches ({len(plan)}) than processes ({place.world})")
        self.total_steps = cfg.optim.max_steps or self.per_epoch * cfg.optim.epochs
        self.net: torch.nn.Module = self.model

    def resume_or_start(self, resume: bool) -> None:
        """Continue from ``checkpoints/last.pt`` when there is one (and ``resume``), else start: from
        ``optim.init_from`` when set, else from the seeded initialisation. Then wrap for DDP."""
        cfg = self.cfg
        if resume and self.last_path.is_file():
            ckpt = load_checkpoint(self.last_path)
            why = mismatch(ckpt, cfg, self.teacher_dims)
            if why:
                raise ValueError(f"{self.last_path} was trained with {why}; use another run.dir or delete it")
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.state = replace(self.state, **ckpt["state"])
            set_rng_state(ckpt["rng"])
            s = self.state
            self.log.event({"kind": "resume", "step": s.step, "epoch": s.epoch, "batch": s.batch})
        else:
            if cfg.optim.init_from is not None:
                init_weights(self.model, cfg, self.teacher_dims, self.loaded.standardizers)
            self.log.event(
                {
                    "kind": "start",
                    "config": cfg.model_dump(mode="json"),
                    "data": self.ds.stats,
                    "parameters": self.model.parameter_count(),
                    "total_steps": self.total_steps,
                    "batches_per_epoch": self.per_epoch,
                    "device": str(self.place.device),
                    "bf16_autocast": self.use_amp,
                    "world_size": self.place.world,
                    "threads": torch.get_num_threads(),
                }
            )
        if self.place.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            device = self.place.device
            self.net = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )

    # --- one step -----------------------------------------------------------------------------------
    def set_lr(self) -> float:
        budget = self.cfg.optim.time_budget_s
        frac = self.state.train_seconds / budget if budget else 0.0
        factor = lr_factor(self.state.step, self.cfg.optim.warmup_steps, self.total_steps, frac)
        lr = self.cfg.optim.lr * factor
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def loss(self, out: dict[str, Tensor], b: Batch) -> tuple[Tensor, dict[str, float]]:
        """The teachers' weighted per-protein losses, plus the per-residue terms where configured."""
        cfg, loaded = self.cfg, self.loaded
        loss = torch.zeros((), device=self.place.device)
        parts: dict[str, float] = {}
        for t in cfg.teachers:
            lt, p = embedding_loss(
                out[f"teacher_{t.name}"], b.targets[t.name], cfg.loss, loaded.standardizers[t.name]
            )
            loss = loss + t.weight / self.wsum * lt
            parts.update({f"{t.name}.{k}": v for k, v in p.items()})
            if t.name in b.residue_targets:
                with torch.autocast(self.place.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                    rp = self.model.residue_predictions(out["trunk_states"])[t.name]
                lr_ = residue_loss(rp, b.residue_targets[t.name], b.mask, cfg.loss)
                loss = loss + cfg.loss.per_residue * t.weight / self.wsum * lr_
                parts[f"{t.name}.residue"] = float(lr_.detach())
        if self.anchor is not None and b.anchor is not None:
            pooled = self.anchor.standardizer.apply(out["student"].float())
            la, p = embedding_loss(pooled, b.anchor, cfg.loss, self.anchor.standardizer)
            loss = loss + cfg.anchor.weight * la
            parts.update({f"anchor.{k}": v for k, v in p.items()})
        if self.anchor is not None and self.anchor.model is not None:
            with torch.autocast(self.place.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                held = self.anchor.trunk_states(b.ids, b.mask)
            sse, spread = residue_drift(out["trunk_states"], held, b.mask)
            lr_ = sse / spread.clamp(min=1e-12)
            loss = loss + cfg.anchor.residue_weight * lr_
            parts["anchor.residue"] = float(lr_.detach())
        return loss, parts

    def step(self, b: Batch, epoch: int, totals: EpochTotals) -> None:
        """Forward, loss, backward, optimizer step; counts and logs it."""
        cfg, state = self.cfg, self.state
        t0 = time.perf_counter()
        with torch.autocast(self.place.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            out = self.net(b.ids, b.mask)
        loss, parts = self.loss(out, b)
        self.set_lr()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.opt.step()
        dt = time.perf_counter() - t0
        nres = int(b.mask.sum())
        state.step += 1
        state.batch += 1
        state.train_seconds += dt
        state.train_residues += nres
        totals.residues += nres
        totals.loss_sum += float(loss.detach())
        totals.steps += 1
        if state.step % cfg.optim.log_every_steps == 0:
            self.log.event(
                {
                    "kind": "step",
                    "step": state.step,
                    "epoch": epoch,
                    "loss": float(loss.detach()),
                    "lr": self.opt.param_groups[0]["lr"],
                    "residues_per_s": nres / dt if dt else 0.0,
                    **parts,
                }
            )

    # --- epochs -------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's share of the epoch's batch plan (an equal count per rank: no DDP hang)."""
        place = self.place
        batches = self.plan(epoch)
        # Weighted epochs differ a little in length: each rank takes the same count, never more than
        # the first epoch's (the schedule's unit).
        per_rank = min(self.per_epoch, len(batches) // place.world)
        return batches[: per_rank * place.world][place.rank :: place.world]

    def plan(self, epoch: int) -> list[list[int]]:
        """The whole epoch's batch plan (all ranks), ``data.source_weights`` applied."""
        cfg = self.cfg
        return epoch_plan(
            self.lengths, self.sources, cfg.data.source_weights, cfg.optim.batch_tokens, cfg.run.seed, epoch
        )

    def run_epoch(
        self, epoch: int, prefetch: ThreadPoolExecutor, stop_after_steps: int | None, t_start: float
    ) -> tuple[EpochTotals, str | None]:
        """The epoch's remaining steps, from the state's batch position; returns its totals and why it
        stopped early: ``"interrupted"`` (stop_after_steps), ``"time_budget"``, ``"max_steps"`` or None."""
        cfg, state = self.cfg, self.state
        batches = self.epoch_batches(epoch)
        totals = EpochTotals(time.perf_counter())

        def prepare(i: int) -> Future[Batch] | None:
            # The next batch is prepared on a worker thread while this one runs (tokenizing and gathering
            # per-residue targets is CPU work that would otherwise leave a GPU idle between steps).
            if i >= len(batches):
                return None
            anchor = None if self.anchor is None else self.anchor.train
            return prefetch.submit(
                prepare_batch, self.ds, self.loaded, cfg, batches[i], self.place.device, anchor
            )

        pending = prepare(state.batch)
        while pending is not None:
            b = pending.result()
            pending = prepare(state.batch + 1)
            self.step(b, epoch, totals)
            if cfg.optim.checkpoint_every_steps and state.step % cfg.optim.checkpoint_every_steps == 0:
                self.save(self.last_path)
            over_budget = cfg.optim.time_budget_s and time.perf_counter() - t_start > cfg.optim.time_budget_s
            if (stop_after_steps is not None and state.step >= stop_after_steps) or over_budget:
                self.save(self.last_path)
                if over_budget:
                    self.log.event({"kind": "time_budget", "step": state.step})
                    return totals, "time_budget"
                return totals, "interrupted"
            if cfg.optim.max_steps and state.step >= cfg.optim.max_steps:
                return totals, "max_steps"
        return totals, None

    def end_epoch(self, epoch: int, totals: EpochTotals, t_start: float) -> bool:
        """Validate, log the epoch, checkpoint (best when improved, always last); True to go on."""
        cfg, state = self.cfg, self.state
        over = bool(cfg.optim.time_budget_s and time.perf_counter() - t_start > cfg.optim.time_budget_s)
        val = evaluate(
            self.model, self.ds.val, self.loaded.val, self.loaded, cfg, self.place.device, self.anchor
        )
        improved = val["val_loss"] < state.best_val - 1e-5
        if improved:
            state.best_val, state.bad_epochs, state.best_epoch = val["val_loss"], 0, epoch
        else:
            state.bad_epochs += 1
        rec = {
            "kind": "epoch",
            "epoch": epoch,
            "step": state.step,
            "train_loss": totals.loss_sum / max(1, totals.steps),
            "train_residues": state.train_residues,  # all epochs so far (weighted epochs vary in size)
            "train_residues_per_s": totals.residues / max(1e-9, time.perf_counter() - totals.start),
            "lr": self.opt.param_groups[0]["lr"],
            "elapsed_s": time.perf_counter() - t_start,
            **val,
        }
        state.history.append(rec)
        self.log.event(rec)
        flat = {k: v for k, v in rec.items() if not isinstance(v, dict) and k != "kind"}
        for key in ("val_cosine", "val_cosine_std"):
            flat.update({f"{key}_{n}": v for n, v in val[key].items()})
        self.log.epoch_row(flat)
        state.epoch, state.batch = epoch + 1, 0
        epoch_done_partial = cfg.optim.max_steps and state.step >= cfg.optim.max_steps
        if improved:
            self.save(self.best_path)
        self.save(self.last_path)
        if cfg.optim.patience and state.bad_epochs >= cfg.optim.patience:
            self.stopped_early = True
            self.log.event({"kind": "early_stop", "epoch": epoch, "best_epoch": state.best_epoch})
            return False
        return not (over or epoch_done_partial)

    def run(self, stop_after_steps: int | None = None) -> TrainResult:
        """Epochs until the configured epochs, max_steps, time budget, patience or ``stop_after_steps``
        (a simulated interruption: the result says ``finished=False``)."""
        cfg, state = self.cfg, self.state
        t_start = time.perf_counter()
        self.model.train()
        self.stopped_early = interrupted = False
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prefetch") as prefetch:
            while state.epoch < cfg.optim.epochs and not (
                cfg.optim.max_steps and state.step >= cfg.optim.max_steps
            ):
                epoch = state.epoch
                totals, stop = self.run_epoch(epoch, prefetch, stop_after_steps, t_start)
                if stop == "interrupted":
                    interrupted = True
                    break
                if not self.end_epoch(epoch, totals, t_start):
                    break
        if self.place.world > 1:
            import torch.distributed as dist

            dist.barrier()
        last_val = state.history[-1] if state.history else {}
        rate = state.train_residues / state.train_seconds if state.train_seconds else 0.0
        if not interrupted:
            self.log.event(
                {
                    "kind": "done",
                    "step": state.step,
                    "early_stopped": self.stopped_early,
                    "best_epoch": state.best_epoch,
                    "train_residues_per_s": rate,
                }
            )
        return TrainResult(
            self.run_dir,
            self.best_path,
            self.last_path,
            state.step,
            not interrupted,
            last_val,
            rate,
            state.history,
        )

    # --- checkpoints --------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """The whole run at this point (model, optimizer, state, RNG): enough to resume exactly."""
        if not self.place.is_main:
            return
        cfg, loaded = self.cfg, self.loaded
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": cfg.model_dump(mode="json"),
                "student_config": cfg.student.model_dump(mode="json"),
                "teacher_dims": self.teacher_dims,
                "residue_dims": self.residue_dims,
                "standardizers": {n: (s.mean, s.std) for n, s in loaded.standardizers.items()},
                "teacher_meta": loaded.teacher_meta,
                "teacher_weights": {t.name: t.weight for t in cfg.teachers},
                "data_stats": self.ds.stats,
                "val_sequences": [i.sequence for i in self.ds.val],
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "state": asdict(self.state),
                "rng": rng_state(),
            },
            path,
        )


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
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = _Logger(run_dir, is_main, echo)

    loaded = load_targets(cfg, ds)
    try:
        trainer = Trainer(cfg, ds, loaded, run_dir, Placement(device, world, rank), log)
        trainer.resume_or_start(resume)
        return trainer.run(stop_after_steps)
    finally:
        loaded.close()
