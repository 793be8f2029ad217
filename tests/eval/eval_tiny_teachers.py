"""Tiny PyTorch teachers for the evaluation and benchmark tests (named like the tiny ONNX model's heads).

Each embeds residues with a fixed random table, mixes neighbours with one 1-D convolution and
mean-pools over the real residues: the shape of a real teacher (NEAR is a deeper version of this), at a
size that runs in milliseconds. Loaded by ``NAME=eval_tiny_teachers:NAME`` specs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from protembed import tokenizer
from protembed_distill.teachers.base import Teacher, TeacherOutput


class TinyConvTeacher(Teacher):
    licence = "test fixture"
    representation = "mean over residues of one random 1-D convolution"
    max_length = 1000

    def __init__(self, name: str, dim: int, seed: int) -> None:
        self.name = name
        self.dim = dim
        self.per_residue_dim = dim
        gen = torch.Generator().manual_seed(seed)
        self.embedding = torch.randn(tokenizer.VOCAB_SIZE, 16, generator=gen)
        self.conv = torch.nn.Conv1d(16, dim, kernel_size=5, padding=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.2)
            self.conv.bias.zero_()
        self.conv.eval()

    @torch.no_grad()
    def embed(self, sequences: Sequence[str], per_residue: bool = False) -> TeacherOutput:
        batch = tokenizer.batch_encode(list(sequences))
        ids = torch.from_numpy(batch.input_ids)
        mask = torch.from_numpy(batch.attention_mask).float()
        x = self.embedding[ids].transpose(1, 2)  # [B, 16, L]
        states = torch.tanh(self.conv(x)).transpose(1, 2) * mask.unsqueeze(-1)  # [B, L, dim]
        pooled = states.sum(1) / mask.sum(1, keepdim=True)
        residues = [states[i, : int(n)].numpy().astype(np.float32) for i, n in enumerate(batch.lengths)]
        return TeacherOutput(pooled.numpy().astype(np.float32), residues if per_residue else None)


def alpha() -> TinyConvTeacher:
    return TinyConvTeacher("alpha", 6, seed=1)


def beta() -> TinyConvTeacher:
    return TinyConvTeacher("beta", 3, seed=2)
