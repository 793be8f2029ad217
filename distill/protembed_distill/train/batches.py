"""Training batches: the epoch's batch plan (a pure function of lengths, seed and epoch, so a resumed
run sees the same batches) and one step's tensors on the device.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from protembed.tokenizer import batch_encode
from protembed_distill.config import DistillConfig
from protembed_distill.data.dataset import Dataset, Item
from protembed_distill.train.targets import LoadedTargets, residue_targets


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
