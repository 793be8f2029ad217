"""Transformer teachers loaded through Hugging Face ``transformers``: ESM-2 and ProtT5 (and the shared
machinery AntiBERTy uses).

Every model here is an encoder over one token per residue plus special tokens around the residues
(ESM-2: ``<cls> … <eos>``; ProtT5: ``… </s>``; BERT: ``[CLS] … [SEP]``). Tokenization is derived from
each checkpoint's *own* tokenizer once at load time (:class:`ResidueTokens`): every residue letter is
tokenized alone (it must give exactly one id) and one probe sequence shows which special ids go before and
after the residues. Encoding a batch is then a table lookup, identical to calling the tokenizer on the
model's documented input form (tested), and the residue positions are known exactly, so the per-protein
vector is the mean over real residues only — never BOS/EOS, never padding.

Nothing is downloaded silently: ``model=`` is a local folder, or a hub name that must already be in the
local Hugging Face cache; ``download=True`` is the explicit opt-in to let transformers fetch it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protembed_distill.teachers.base import Teacher, TeacherOutput, TeacherUnavailableError

# What protembed.tokenizer.normalize lets through: the 20 standard residues and X.
RESIDUES = "ACDEFGHIKLMNPQRSTVWYX"

ESM2_DEFAULT = "facebook/esm2_t33_650M_UR50D"
PROTT5_DEFAULT = "Rostlab/prot_t5_xl_half_uniref50-enc"


@dataclass(frozen=True)
class ResidueTokens:
    """Residue letter -> token id, plus the special ids a checkpoint's tokenizer puts around residues."""

    lookup: np.ndarray  # int64 [256]: byte -> id, -1 for a byte that is not a known residue
    prefix: tuple[int, ...]  # e.g. (<cls>,)
    suffix: tuple[int, ...]  # e.g. (<eos>,)
    pad_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, probe_sep: str = " ") -> ResidueTokens:
        """Probe ``tokenizer`` (a transformers tokenizer) residue by residue.

        ``probe_sep`` is how the model's own recipe joins residues (" " for ProtT5 and BERT vocabularies,
        "" for ESM); it is only used for the probe, since each residue is one token either way.
        """
        lookup = np.full(256, -1, dtype=np.int64)
        for res in RESIDUES:
            ids = tokenizer(res, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(
                    f"tokenizer turns residue {res!r} into {len(ids)} tokens {ids}; per-residue positions "
                    "would not line up with residues"
                )
            lookup[ord(res)] = int(ids[0])
        # A tokenizer built without its vocabulary maps everything to <unk> one token at a time, which the
        # length check above cannot see (transformers 5's BertTokenizer ignores ``vocab_file=`` that way).
        standard = [int(lookup[ord(c)]) for c in RESIDUES if c != "X"]
        unk = getattr(tokenizer, "unk_token_id", None)
        if len(set(standard)) != len(standard) or unk in standard:
            raise ValueError(
                f"tokenizer does not give the 20 standard residues distinct known ids: {standard}"
            )
        probe = "ACD"
        full = list(tokenizer(probe_sep.join(probe), add_special_tokens=True)["input_ids"])
        body = [int(lookup[ord(c)]) for c in probe]
        starts = [i for i in range(len(full) - 2) if full[i : i + 3] == body]
        if len(starts) != 1:
            raise ValueError(f"could not find the residues {body} in the tokenizer's output {full}")
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("tokenizer has no pad token")
        start = starts[0]
        return cls(lookup, tuple(full[:start]), tuple(full[start + 3 :]), int(pad_id))

    def encode(self, sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` (int64 [B, T]); residue i of a row sits at
        ``len(prefix) + i``."""
        n_special = len(self.prefix) + len(self.suffix)
        width = max(len(s) for s in sequences) + n_special
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, seq in enumerate(sequences):
            if not seq:
                raise ValueError(f"sequence {row} is empty")
            try:
                raw = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
            except UnicodeEncodeError as exc:
                raise ValueError(f"sequence {row} has a non-ASCII character") from exc
            body = self.lookup[raw]
            if (body < 0).any():
                pos = int(np.argmax(body < 0))
                raise ValueError(
                    f"sequence {row} has invalid character {seq[pos]!r} at position {pos + 1} "
                    "(normalize with protembed.tokenizer.normalize first)"
                )
            tokens = np.concatenate(
                [np.asarray(self.prefix, np.int64), body, np.asarray(self.suffix, np.int64)]
            )
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)


class HFEncoderTeacher(Teacher):
    """A transformers encoder whose ``last_hidden_state`` [B, T, dim] is pooled over residue positions."""

    def __init__(
        self,
        *,
        name: str,
        model: torch.nn.Module,
        tokens: ResidueTokens,
        dim: int,
        max_length: int,
        licence: str,
        representation: str,
        device: str | torch.device = "cpu",
        prepare: Callable[[str], str] = lambda s: s,
    ) -> None:
        self.name = name
        self.dim = dim
        self.per_residue_dim = dim
        self.max_length = max_length
        self.licence = licence
        self.representation = representation
        self.tokens = tokens
        self.prepare = prepare  # model-specific residue mapping applied before the lookup
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=torch.float32).eval()

    def _crop(self, sequences: Sequence[str]) -> list[str]:
        too_long = [(i, len(s)) for i, s in enumerate(sequences) if len(s) > self.max_length]
        if too_long:
            shown = ", ".join(f"#{i} ({n})" for i, n in too_long[:5])
            warnings.warn(
                f"{self.name}: {len(too_long)} sequence(s) longer than {self.max_length} residues cropped to "
                f"their first {self.max_length} (per-residue output covers the cropped part only): {shown}",
                stacklevel=3,
            )
        return [self.prepare(s[: self.max_length]) for s in sequences]

    @torch.inference_mode()
    def embed(self, sequences: Sequence[str], per_residue: bool = False) -> TeacherOutput:
        if not sequences:
            raise ValueError(f"{self.name}: embed needs at least one sequence")
        seqs = self._crop(sequences)
        input_ids, attention_mask = self.tokens.encode(seqs)
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
        states = out.last_hidden_state.float()  # [B, T, dim]
        lengths = torch.tensor([len(s) for s in seqs])
        offset = len(self.tokens.prefix)
        positions = torch.arange(states.shape[1])
        residue_mask = (positions[None, :] >= offset) & (positions[None, :] < offset + lengths[:, None])
        m = residue_mask.to(self.device, states.dtype).unsqueeze(-1)
        per_protein = ((states * m).sum(dim=1) / m.sum(dim=1)).cpu().numpy()
        residues = None
        if per_residue:
            host = states.cpu().numpy()
            residues = [
                np.ascontiguousarray(host[i, offset : offset + n]) for i, n in enumerate(lengths.tolist())
            ]
        return TeacherOutput(per_protein=per_protein, per_residue=residues)


def resolve_source(model: str | Path, *, what: str, how: str) -> tuple[str, bool]:
    """(source, is_local) for a ``model=`` option; a path-like value that does not exist is an error."""
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path), True
    if path.is_absolute() or text.startswith((".", "~")) or path.exists():
        raise TeacherUnavailableError(f"{what}: {text} is not a model folder. {how}")
    return text, False


def load_pretrained(
    cls: Any,
    source: str,
    *,
    local: bool,
    download: bool,
    cache_dir: str | Path | None,
    what: str,
    how: str,
    ignore_missing: tuple[str, ...] = (),
    **kwargs: Any,
) -> Any:
    """``cls.from_pretrained`` offline unless ``download``; a missing or incomplete checkpoint is an error."""
    from transformers.utils import logging as hf_logging

    # transformers prints a load report listing every unused head weight of a pretraining checkpoint, and a
    # progress bar; the keys that matter (missing ones) are checked below, so keep both quiet while loading.
    verbosity = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(
            source,
            local_files_only=not download,
            cache_dir=None if cache_dir is None else str(cache_dir),
            dtype=torch.float32,
            output_loading_info=True,
            **kwargs,
        )
    except (OSError, ValueError) as exc:
        where = "folder" if local else "local Hugging Face cache"
        raise TeacherUnavailableError(
            f"{what}: cannot load {source!r} from the {where} ({exc}). {how}"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    # Only weights on the path to last_hidden_state matter (ESM's contact head is not).
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(ignore_missing)]
    if missing:  # transformers would fill these with random values and carry on
        raise TeacherUnavailableError(
            f"{what}: checkpoint {source!r} lacks {len(missing)} weight(s) of {cls.__name__} "
            f"(e.g. {missing[:3]}); is it the right kind of model?"
        )
    return model


def load_tokenizer(
    cls: Any,
    source: str,
    *,
    download: bool,
    cache_dir: str | Path | None,
    what: str,
    how: str,
    **kwargs: Any,
) -> Any:
    try:
        return cls.from_pretrained(
            source,
            local_files_only=not download,
            cache_dir=None if cache_dir is None else str(cache_dir),
            **kwargs,
        )
    except (OSError, ValueError, ImportError, TypeError) as exc:  # TypeError: a vocab file is missing
        raise TeacherUnavailableError(
            f"{what}: cannot load the tokenizer of {source!r} ({exc}). {how}"
        ) from exc


def _hub_help(default: str) -> str:
    return (
        f"Pass model=<local folder> or a hub name already in the Hugging Face cache; to get one, run "
        f"`hf download {default}` (huggingface_hub) on a machine with internet, or pass download=True to let "
        "transformers fetch it explicitly. Nothing is downloaded silently."
    )


def load_esm2(
    *,
    model: str | Path = ESM2_DEFAULT,
    device: str = "cpu",
    max_length: int = 1022,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> HFEncoderTeacher:
    """ESM-2 (transformers ``EsmModel``) from a local folder or a cached hub name (any facebook/esm2_*)."""
    from transformers import EsmModel, EsmTokenizer

    how = _hub_help(ESM2_DEFAULT)
    source, local = resolve_source(model, what="esm2", how=how)
    # Weights first: a missing checkpoint gives transformers' clear OSError there, while a tokenizer with
    # no vocab file fails with a bare TypeError. Real checkpoints are EsmForMaskedLM ("esm." prefix);
    # EsmModel takes the encoder and drops the LM head. The pooler is not trained by masked-LM
    # pretraining, so it is not built at all.
    net = load_pretrained(
        EsmModel,
        source,
        local=local,
        download=download,
        cache_dir=cache_dir,
        what="esm2",
        how=how,
        add_pooling_layer=False,
        ignore_missing=("contact_head.",),
    )
    tokenizer = load_tokenizer(
        EsmTokenizer, source, download=download, cache_dir=cache_dir, what="esm2", how=how
    )
    return HFEncoderTeacher(
        name="esm2",
        model=net,
        tokens=ResidueTokens.from_tokenizer(tokenizer, probe_sep=""),
        dim=int(net.config.hidden_size),
        # ESM's own extract.py truncates at 1022 residues (1024 positions with <cls>/<eos>).
        max_length=max_length,
        licence="MIT (facebookresearch/esm weights); check the card of a non-Meta checkpoint",
        representation=(
            f"mean over real residues of the last layer (EsmModel.last_hidden_state, after the final layer "
            f"norm) of {source}, <cls>/<eos> excluded: esm extract.py's 'mean' representation"
        ),
        device=device,
    )


# ProtTrans maps the rare/ambiguous U, Z, O, B to X; normalize() has already done so, this keeps the
# teacher correct if handed raw sequences too.
_PROTT5_MAP = str.maketrans(dict.fromkeys("UZOB", "X"))


def _prott5_residue(seq: str) -> str:
    return seq.translate(_PROTT5_MAP)


def load_prott5(
    *,
    model: str | Path = PROTT5_DEFAULT,
    device: str = "cpu",
    max_length: int = 4096,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> HFEncoderTeacher:
    """ProtT5 encoder (transformers ``T5EncoderModel``), e.g. Rostlab/prot_t5_xl_half_uniref50-enc.

    Input as ProtTrans documents it: residues separated by spaces, U/Z/O/B -> X, ``</s>`` appended (the
    tokenizer adds it). The real checkpoint's tokenizer is a SentencePiece ``spiece.model``; transformers
    needs the ``sentencepiece`` package to read it unless the folder also has a ``tokenizer.json``. The
    half-precision checkpoint is upcast to float32.
    """
    from transformers import T5EncoderModel, T5Tokenizer

    how = _hub_help(PROTT5_DEFAULT) + " Reading spiece.model needs `pip install sentencepiece`."
    source, local = resolve_source(model, what="prott5", how=how)
    net = load_pretrained(
        T5EncoderModel, source, local=local, download=download, cache_dir=cache_dir, what="prott5", how=how
    )
    tokenizer = load_tokenizer(
        T5Tokenizer,
        source,
        download=download,
        cache_dir=cache_dir,
        what="prott5",
        how=how,
        do_lower_case=False,
    )
    return HFEncoderTeacher(
        name="prott5",
        model=net,
        tokens=ResidueTokens.from_tokenizer(tokenizer, probe_sep=" "),
        dim=int(net.config.d_model),
        # Relative position buckets put no hard limit on length; this bound only caps memory.
        max_length=max_length,
        licence="AFL-3.0 per ProtTrans (Rostlab); check the model card of the checkpoint used",
        representation=(
            f"mean over real residues of the encoder's last hidden state of {source}, </s> excluded "
            "(ProtTrans's per-protein recipe)"
        ),
        device=device,
        prepare=_prott5_residue,
    )


def load(name: str = "esm2", **options: Any) -> HFEncoderTeacher:
    """``load("esm2", model=...)`` / ``load("prott5", model=...)``: see load_esm2 and load_prott5."""
    loaders: dict[str, Callable[..., HFEncoderTeacher]] = {"esm2": load_esm2, "prott5": load_prott5}
    if name not in loaders:
        raise ValueError(f"hf teachers are {sorted(loaders)}, not {name!r}")
    return loaders[name](**options)
