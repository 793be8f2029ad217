"""The compact student: a pre-LN transformer encoder over protembed.tokenizer ids, mean-pooled.

Attention is written out by hand instead of using ``torch.nn.TransformerEncoder``: the latter's
fast path bakes the example's batch and length into ONNX Reshape nodes, and the exported graph
then fails on any other shape. Here every reshape takes batch and length from the tensor's runtime
shape (or -1), so the same graph serves any [batch, length].

Outputs (names shared with the ONNX contract): ``student`` [B, e] masked mean of the final
layer-normed residue states (e = d), or of a wider GELU projection of them when ``pool_dim`` is set
(e = pool_dim), ``residue_states`` [B, L, r] (the per-residue output: the final states, r = d, or
the :class:`ResidueAdapter`'s features when there is one, r = its width), ``trunk_states`` [B, L, d]
(always the final states; training only, not exported), and ``teacher_<name>`` [B, dim_t], one
linear head per teacher. During training the heads predict *standardized* teacher vectors; export
folds mean/std into them (:meth:`Student.fold_standardization`) so the ONNX model answers in each
teacher's original units.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from protembed.tokenizer import PAD_ID, VOCAB_SIZE
from protembed_distill.config import ResidueAdapterConfig, StudentConfig

__all__ = ["ResidueAdapter", "Student", "masked_mean"]

# Additive mask value: large enough that exp() underflows to exactly 0, small enough for float16.
_MASK_VALUE = -1.0e4


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean over positions where mask == 1; states [B, L, d], mask [B, L] (int or float).

    Sums in float32 whatever the states' dtype (a float16 sum over 1000 residues loses digits), and
    returns the states' dtype."""
    m = mask.to(torch.float32).unsqueeze(-1)
    pooled = (states.float() * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    return pooled.to(states.dtype)


def sinusoidal_table(max_length: int, d_model: int) -> Tensor:
    pos = torch.arange(max_length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_length, d_model)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div[: d_model // 2])
    return table


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x [B, L, d]; bias [B, 1, 1, L] additive (0 for real keys, _MASK_VALUE for pads)."""
        b, n = x.shape[0], x.shape[1]
        # [B, L, 3, H, hd] -> 3 x [B, H, L, hd]; only H and hd are constants of the model.
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if not torch.onnx.is_in_onnx_export():
            # Fused kernel for training/eval speed; same math as the explicit path below (tested by
            # export parity, which compares this path in PyTorch to the explicit one in ONNX).
            fused = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0
            )
            out_fused: Tensor = self.out(fused.transpose(1, 2).reshape(b, n, -1))
            return out_fused
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim)) + bias
        attn = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, -1)
        out: Tensor = self.out(ctx)
        return out


class Block(nn.Module):
    """Pre-LN: x + attn(LN(x)); x + ffn(LN(x)). Stable without warmup tricks at small sizes."""

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Linear(ffn, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), bias))
        return x + self.drop(self.ff(self.ln2(x)))


class ResidueAdapter(nn.Module):
    """Per-residue features from the trunk's final states: a 1-D convolution over those states and a
    residue-identity embedding, then residual convolutions (one per ``residual_dilations`` entry, two
    convolutions in all by default), then LayerNorm.

    Why: the trunk's states are shaped by the per-protein objectives (they are mean-pooled), and a
    linear probe of secondary structure on them scored below the teachers' residue states and below a
    one-hot window of the sequence. The teachers' residue states carry local sequence context (NEAR is a
    residue CNN); convolutions give the student that inductive bias cheaply, on top of the trunk's
    global context. Trained with the trunk frozen to predict both teachers' residue states, so the
    per-protein outputs do not change at all.

    Padding: inputs are zeroed at padded positions before each convolution, so a real residue near the
    end sees zeros past it, exactly as the convolution's own zero padding gives the same sequence alone
    (the vectors do not depend on batch-mates).
    """

    def __init__(self, d_model: int, cfg: ResidueAdapterConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.embed, padding_idx=PAD_ID)
        pad = cfg.kernel // 2
        self.conv1 = nn.Conv1d(d_model + cfg.embed, cfg.width, cfg.kernel, padding=pad)
        # conv2, conv3, ...: attribute names, not a ModuleList, so a default head's weights keep the
        # names model 1.3.0 shipped with (its file is read back by name).
        self.residual_names = [f"conv{i + 2}" for i in range(len(cfg.residual_dilations))]
        for name, dilation in zip(self.residual_names, cfg.residual_dilations, strict=True):
            conv = nn.Conv1d(cfg.width, cfg.width, cfg.kernel, padding=pad * dilation, dilation=dilation)
            self.add_module(name, conv)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, states: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # In the adapter's own precision: the fp16 export keeps it float32 (``convert_fp16``), since a
        # float16 convolution's result moves by a rounding step with the padded length.
        dtype = self.conv1.weight.dtype
        keep = attention_mask.to(dtype).unsqueeze(1)  # [B, 1, L]
        x = torch.cat([states.to(dtype), self.embed(input_ids).to(dtype)], dim=-1).transpose(1, 2) * keep
        h = F.gelu(self.conv1(x)) * keep
        for i, name in enumerate(self.residual_names):
            if i:  # the next convolution must see zeros at padding (the last one's output is not read)
                h = h * keep
            h = h + F.gelu(getattr(self, name)(h))
        out: Tensor = self.norm(h.transpose(1, 2))
        return out


class Student(nn.Module):
    def __init__(
        self,
        cfg: StudentConfig,
        teacher_dims: dict[str, int],
        residue_dims: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(VOCAB_SIZE, d, padding_idx=PAD_ID)
        if cfg.positions == "learned":
            self.pos: nn.Embedding | None = nn.Embedding(cfg.max_length, d)
        else:
            self.pos = None
            self.register_buffer("pos_table", sinusoidal_table(cfg.max_length, d), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)
        self.pool_proj: nn.Module | None = (
            nn.Sequential(nn.Linear(d, cfg.pool_dim), nn.GELU()) if cfg.pool_dim else None
        )
        e = self.embedding_dim
        self.heads = nn.ModuleDict({name: nn.Linear(e, dim) for name, dim in teacher_dims.items()})
        self.residue_adapter: ResidueAdapter | None = (
            ResidueAdapter(d, cfg.residue_adapter) if cfg.residue_adapter is not None else None
        )
        # Training-only projections to per-residue teacher spaces; not exported.
        self.residue_heads = nn.ModuleDict({n: nn.Linear(d, dim) for n, dim in (residue_dims or {}).items()})

    @property
    def embedding_dim(self) -> int:
        """Width of the ``student`` output (the student's own per-protein embedding)."""
        return self.cfg.pool_dim or self.cfg.d_model

    @property
    def residue_dim(self) -> int:
        """Width of the ``residue_states`` output (the served ``residues``)."""
        return self.cfg.residue_adapter.width if self.cfg.residue_adapter is not None else self.cfg.d_model

    @property
    def teacher_names(self) -> list[str]:
        return list(self.heads.keys())

    @property
    def teacher_dims(self) -> dict[str, int]:
        """Each teacher head's output width (what ``Student(cfg, teacher_dims)`` was built with)."""
        return {name: int(head.weight.shape[0]) for name, head in self.heads.items()}  # type: ignore[index]

    def positions(self, n: int) -> Tensor:
        if self.pos is not None:
            return self.pos.weight[:n]
        table = self.pos_table
        assert isinstance(table, Tensor)
        return table[:n]

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Final layer-normed residue states [B, L, d]."""
        n = input_ids.shape[1]
        x = self.drop(self.embed(input_ids) + self.positions(n).unsqueeze(0))
        bias = (1.0 - attention_mask.to(x.dtype)).unsqueeze(1).unsqueeze(2) * _MASK_VALUE
        for block in self.blocks:
            x = block(x, bias)
        out: Tensor = self.norm(x)
        return out

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        states = self.encode(input_ids, attention_mask)
        features = states if self.pool_proj is None else self.pool_proj(states)
        pooled = masked_mean(features, attention_mask)
        residues = (
            states
            if self.residue_adapter is None
            else self.residue_adapter(states, input_ids, attention_mask)
        )
        out = {"student": pooled, "residue_states": residues, "trunk_states": states}
        for name, head in self.heads.items():
            out[f"teacher_{name}"] = head(pooled)
        return out

    def residue_predictions(self, states: Tensor) -> dict[str, Tensor]:
        return {name: head(states) for name, head in self.residue_heads.items()}

    @torch.no_grad()
    def fold_standardization(self, stats: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Make each head output original units: y = (W s + b) * std + mean."""
        for name, (mean, std) in stats.items():
            head = self.heads[name]
            assert isinstance(head, nn.Linear)
            head.weight.mul_(std.to(head.weight.dtype).unsqueeze(1))
            head.bias.mul_(std.to(head.bias.dtype)).add_(mean.to(head.bias.dtype))

    def unfold_standardization(self, stats: dict[str, tuple[Tensor, Tensor]]) -> None:
        """The inverse of :meth:`fold_standardization`: heads in original units back to standardized
        ones (training's target space), with this run's statistics: s = (y - mean) / std."""
        for name, (mean, std) in stats.items():
            head = self.heads[name]
            assert isinstance(head, nn.Linear)
            head.bias.sub_(mean.to(head.bias)).div_(std.to(head.bias))  # .to(t): t's device and dtype
            head.weight.div_(std.to(head.weight).unsqueeze(1))

    def parameter_count(self, include_residue_heads: bool = False) -> int:
        return sum(
            p.numel()
            for n, p in self.named_parameters()
            if include_residue_heads or not n.startswith("residue_heads.")
        )
