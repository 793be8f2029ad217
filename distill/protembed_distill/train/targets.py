"""What the student learns from: each teacher's cached embeddings of the training and validation splits,
standardized per dimension by training-set statistics, and per-residue states where a teacher has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from protembed_distill.config import DistillConfig
from protembed_distill.data.dataset import Dataset
from protembed_distill.teacher_cache import EmbeddingStore, cache_path
from protembed_distill.train.losses import Standardizer

_RESIDUE_STAT_ROWS = 200_000  # residues sampled to fit per-residue standardization
_RESIDUE_RAM_BYTES = 8 << 30  # per-residue caches up to this size are read into memory once


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
