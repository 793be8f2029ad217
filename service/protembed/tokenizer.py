"""The one alphabet and tokenizer shared by training, export and serving.

A mismatch between the tokenizer a student was trained with and the one the server feeds it is the
classic silent bug of this field, so there is exactly one implementation, numpy-only, imported by
``protembed_distill`` as well as by the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protembed.errors import InvalidSequenceError

PAD_TOKEN = "<pad>"
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
UNKNOWN_RESIDUE = "X"
# Ambiguous or non-standard codes that are accepted and read as unknown: selenocysteine (U),
# pyrrolysine (O), Asx (B) and Glx (Z).
AMBIGUOUS_RESIDUES = "UZOB"
# Stripped around a sequence. ASCII only, so that the rule is the same in every client's regex engine
# (the OpenAPI pattern spells it too); other spaces are reported as invalid characters.
WHITESPACE = " \t\n\r\f\v"
ALPHABET_VERSION = "protembed-aa-v1"

# Token ids: 0 is padding, residues follow in a fixed order, X last. Never reorder: trained
# students depend on these ids, and model.json records them.
TOKENS: tuple[str, ...] = (PAD_TOKEN, *STANDARD_RESIDUES, UNKNOWN_RESIDUE)
TOKEN_TO_ID: dict[str, int] = {t: i for i, t in enumerate(TOKENS)}
PAD_ID = 0
UNKNOWN_ID = TOKEN_TO_ID[UNKNOWN_RESIDUE]
VOCAB_SIZE = len(TOKENS)

_ALLOWED = frozenset(STANDARD_RESIDUES + UNKNOWN_RESIDUE)
_TRANSLATE = str.maketrans(dict.fromkeys(AMBIGUOUS_RESIDUES, UNKNOWN_RESIDUE))
# A lookup table from byte value to token id; 255 marks a byte that is not a residue.
_LUT = np.full(256, 255, dtype=np.uint8)
for _tok, _id in TOKEN_TO_ID.items():
    if len(_tok) == 1:
        _LUT[ord(_tok)] = _id


def normalize(sequence: str, index: int | None = None) -> str:
    """Return the canonical form of one sequence, or raise naming the item, character and position.

    Rules: strip surrounding ASCII whitespace, upper-case, map U/Z/O/B to X, drop one trailing ``*`` (a stop
    codon marker from translated FASTA). Anything else — digits, gaps, inner ``*``, inner whitespace,
    non-ASCII — is rejected rather than silently dropped, since dropping shifts every later residue.
    """
    if not isinstance(sequence, str):
        raise InvalidSequenceError(index, f"expected a string, got {type(sequence).__name__}")
    seq = sequence.strip(WHITESPACE)
    if seq.endswith("*"):
        seq = seq[:-1].rstrip(WHITESPACE)
    if not seq:
        raise InvalidSequenceError(index, "sequence is empty")
    # Upper-case ASCII only: str.upper() maps some other characters onto ASCII letters ('ſ' -> 'S',
    # 'ﬀ' -> 'FF'), which would turn a stray character into residues and shift the rest.
    seq = seq.upper() if seq.isascii() else "".join(c.upper() if c.isascii() else c for c in seq)
    seq = seq.translate(_TRANSLATE)
    if _ALLOWED.issuperset(seq):  # the common case, checked in C; the loop below only names the error
        return seq
    for pos, ch in enumerate(seq):
        if ch not in _ALLOWED:
            raise InvalidSequenceError(
                index,
                f"invalid character {ch!r} at position {pos + 1}"
                + (" (gaps are not residues)" if ch in "-." else "")
                + (" (only one trailing '*' is allowed)" if ch == "*" else ""),
                position=pos + 1,
                character=ch,
            )
    return seq


def encode(sequence: str) -> np.ndarray:
    """Token ids (int64) of an already normalized sequence; no special tokens are added."""
    ids = _LUT[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]
    if (ids == 255).any():  # normalize() was skipped: refuse rather than feed garbage ids
        bad = int(np.argmax(ids == 255))
        raise InvalidSequenceError(None, f"invalid character {sequence[bad]!r} at position {bad + 1}")
    return ids.astype(np.int64)


@dataclass(frozen=True)
class EncodedBatch:
    """A padded batch: ``input_ids`` and ``attention_mask`` are int64 [batch, longest]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.shape[0] * self.input_ids.shape[1])

    @property
    def real_tokens(self) -> int:
        return int(self.lengths.sum())


def batch_encode(sequences: Sequence[str], pad_to: int | None = None) -> EncodedBatch:
    """Pad normalized sequences to the longest one (or ``pad_to``) into one batch."""
    if not sequences:
        raise ValueError("batch_encode needs at least one sequence")
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max()) if pad_to is None else max(pad_to, int(lengths.max()))
    ids = np.full((len(sequences), width), PAD_ID, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = encode(seq)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return EncodedBatch(ids, mask, lengths)


def describe() -> dict[str, object]:
    """The input contract as recorded in model.json, so a card can be checked against this code."""
    return {
        "alphabet": ALPHABET_VERSION,
        "tokens": list(TOKENS),
        "pad_id": PAD_ID,
        "unknown_id": UNKNOWN_ID,
        "special_tokens": {"pad": PAD_TOKEN},
        "normalization": "strip, upper-case, U/Z/O/B->X, drop one trailing '*'",
    }
