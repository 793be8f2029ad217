"""AntiBERTy teacher: an 8-layer, 512-d BERT trained by masked language modelling on antibody sequences.

AntiBERTy (Ruffolo et al. 2021) was trained on ~558M antibody heavy/light chains from the Observed
Antibody Space only. It has never seen other proteins, so for a general corpus it is an optional,
out-of-domain third teacher; its vectors say "how antibody-like, and which antibody-like" a sequence is.

Weights: the ``antiberty==0.1.3`` wheel ships a Hugging Face BERT folder
(``antiberty/trained_models/AntiBERTy_md_smooth``, saved from its ``AntiBERTy`` class: a ``BertModel`` plus
LM/species/chain/graft heads) and ``trained_models/vocab.txt``. Only the ``BertModel`` is loaded here
(transformers strips the ``bert.`` prefix; a missing weight is an error, never random init); the heads
and the antiberty package's code are not needed.

Tokenization follows ``AntiBERTyRunner.embed``: residues joined by spaces, ``[CLS] … [SEP]`` around them,
read with ``BertTokenizer(do_lower_case=False)``. The vocabulary has no X, so X becomes ``[UNK]`` as there.
Positions are absolute with 512 slots, so at most 510 residues fit; longer sequences are cropped to their
first 510 with a warning (callers should crop at ``max_length`` themselves).
"""

from __future__ import annotations

from pathlib import Path

from protembed_distill.teachers.base import TeacherUnavailableError
from protembed_distill.teachers.hf import HFEncoderTeacher, ResidueTokens, load_pretrained, load_tokenizer

NAME = "antiberty"
MAX_RESIDUES = 510  # 512 absolute positions minus [CLS] and [SEP]
LICENCE = "MIT (antiberty 0.1.3 wheel, Copyright (c) 2023 Jeffrey Ruffolo)"
REPRESENTATION = (
    "mean over real residues of the last BERT layer (AntiBERTyRunner.embed's default hidden_layer=-1), "
    "[CLS]/[SEP] excluded; trained on antibody sequences only (OAS), so out of domain for other proteins"
)


def models_dir() -> Path:
    """``<teacher_dir>/antiberty/antiberty/trained_models``: ``AntiBERTy_md_smooth/`` and ``vocab.txt``."""
    from protembed_distill.teachers.fetch import teacher_dir  # lazy: fetch owns the cache layout

    return Path(teacher_dir()) / "antiberty" / "antiberty" / "trained_models"


def load(*, device: str = "cpu", path: str | Path | None = None) -> HFEncoderTeacher:
    """The AntiBERTy teacher; ``path`` overrides the ``trained_models`` folder of the fetched wheel."""
    from transformers import BertModel, BertTokenizer

    root = Path(path) if path is not None else models_dir()
    checkpoint = root / "AntiBERTy_md_smooth"
    fetch_hint = "run `protembed teachers fetch antiberty` (extracts antiberty-0.1.3's trained_models)"
    for needed in (checkpoint / "config.json", root / "vocab.txt"):
        if not needed.is_file():
            raise TeacherUnavailableError(f"AntiBERTy file not found: {needed}; {fetch_hint}")
    net = load_pretrained(
        BertModel,
        str(checkpoint),
        local=True,
        download=False,
        cache_dir=None,
        what=NAME,
        how=fetch_hint,
        add_pooling_layer=False,  # the [CLS] pooler is not part of the embedding
    )
    # From the folder rather than BertTokenizer(vocab_file=...): transformers 5 ignores that argument and
    # silently returns an all-[UNK] tokenizer.
    tokenizer = load_tokenizer(
        BertTokenizer,
        str(root),
        download=False,
        cache_dir=None,
        what=NAME,
        how=fetch_hint,
        do_lower_case=False,
    )
    return HFEncoderTeacher(
        name=NAME,
        model=net,
        tokens=ResidueTokens.from_tokenizer(tokenizer, probe_sep=" "),
        dim=int(net.config.hidden_size),
        max_length=min(MAX_RESIDUES, int(net.config.max_position_embeddings) - 2),
        licence=LICENCE,
        representation=REPRESENTATION,
        device=device,
    )
