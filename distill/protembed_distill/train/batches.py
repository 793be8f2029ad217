"""Training batches: the epoch's batch plan (a pure function of lengths, seed and epoch, so a resumed
run sees the same batches) and one step's tensors on the device.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from protembed.packing import Budget, pack_shuffled
from protembed.tokenizer import batch_encode
from protembed_distill.config import DistillConfig
from protembed_distill.data.dataset import Dataset, Item
from protembed_distill.train.targets import LoadedTargets, residue_targets


def make_batches(lengths: Sequence[int], batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batch plan: length-bucketed, shuffled batches with rows x longest <= batch_tokens
    (:func:`protembed.packing.pack_shuffled`), a pure function of (lengths, seed, epoch), so a resumed
    run replays exactly the batches it would have seen."""
    return pack_shuffled(lengths, Budget(batch_tokens), random.Random(seed * 100_003 + epoch))


def epoch_rows(sources: Sequence[str], weights: Mapping[str, float], seed: int, epoch: int) -> list[int]:
    """The training rows one epoch draws, by ``data.source_weights``: a row whose source weighs w is drawn
    floor(w) times and once more with probability w - floor(w), so a fractional weight takes a different
    subset every epoch and, over epochs, every row. A pure function of (sources, weights, seed, epoch),
    like the batch plan, so a resumed run replays the same epoch; no weights: every row once, in order."""
    if not weights:
        return list(range(len(sources)))
    rng = random.Random(seed * 100_003 + epoch + 1_000_000_007)  # not the batch plan's stream
    rows: list[int] = []
    for i, source in enumerate(sources):
        w = weights.get(source, 1.0)
        k = int(w)
        k += rng.random() < w - k
        rows.extend([i] * k)
    return rows


def epoch_plan(
    lengths: Sequence[int],
    sources: Sequence[str],
    weights: Mapping[str, float],
    batch_tokens: int,
    seed: int,
    epoch: int,
) -> list[list[int]]:
    """The epoch's batches as training-row indices: the rows :func:`epoch_rows` draws, packed by
    :func:`make_batches` (without weights, exactly ``make_batches(lengths, ...)``)."""
    rows = epoch_rows(sources, weights, seed, epoch)
    plan = make_batches([lengths[i] for i in rows], batch_tokens, seed, epoch)
    return [[rows[j] for j in batch] for batch in plan]


def collate(items: Sequence[Item], idx: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
    enc = batch_encode([items[i].sequence for i in idx])
    return (torch.from_numpy(enc.input_ids).to(device), torch.from_numpy(enc.attention_mask).to(device))


@dataclass
class Batch:
    """One training step's inputs on the device: token ids, mask, standardized per-protein targets and
    per-residue targets by teacher."""

    ids: Tensor
    mask: Tensor
    targets: dict[str, Tensor]
    residue_targets: dict[str, Tensor]
    anchor: Tensor | None = None  # the anchor's standardized pooled vectors ([anchor]; train/anchor.py)


def prepare_batch(
    ds: Dataset,
    loaded: LoadedTargets,
    cfg: DistillConfig,
    idx: Sequence[int],
    device: torch.device,
    anchor: Tensor | None = None,
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
    return Batch(ids, mask, targets, residue, None if anchor is None else anchor[list(idx)].to(device))
