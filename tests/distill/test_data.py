from __future__ import annotations

import random
from pathlib import Path

import pytest
from distill_fakes import random_sequences, write_corpus

from protembed.tokenizer import STANDARD_RESIDUES
from protembed_distill.config import DataConfig, EvalSetConfig
from protembed_distill.data import dataset as data_mod
from protembed_distill.data.dataset import (
    DataError,
    prepare_dataset,
    read_corpus,
    read_eval_sequences,
    sequence_key,
)

needs_mmseqs = pytest.mark.skipif(
    data_mod.shutil.which("mmseqs") is None,
    reason="mmseqs (MMseqs2) not installed: apt-get install -y mmseqs2",
)


def _mutate(seq: str, frac: float, seed: int) -> str:
    rng = random.Random(seed)
    out = list(seq)
    for i in rng.sample(range(len(seq)), int(frac * len(seq))):
        out[i] = rng.choice([c for c in STANDARD_RESIDUES if c != seq[i]])
    return "".join(out)


def test_read_corpus_normalizes_and_names_bad_records(tmp_path: Path) -> None:
    f = tmp_path / "c.fasta"
    f.write_text(">a|1\nmkta\nyiu\n\n>plain\nACDE*\n")
    recs = read_corpus(f)
    assert [(r.source, r.id, r.sequence) for r in recs] == [
        ("a", "1", "MKTAYIX"),
        ("unknown", "plain", "ACDE"),
    ]
    f.write_text(">a|1\nMK-TA\n")
    with pytest.raises(DataError, match=r"record 'a\|1'.*'-' at position 3"):
        read_corpus(f)


def test_eval_rows_filtered_by_where(tmp_path: Path) -> None:
    tsv = tmp_path / "ss.tsv"
    tsv.write_text("id\tsequence\tset\nx\tMKTA\ttrain\ny\tGGSS\ttest\n")
    assert [s for _, s in read_eval_sequences([EvalSetConfig(path=tsv, where={"set": "test"})])] == ["GGSS"]
    with pytest.raises(DataError, match="unknown column"):
        read_eval_sequences([EvalSetConfig(path=tsv, where={"split": "test"})])


@needs_mmseqs
def test_eval_overlap_removed_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eval_seqs = random_sequences(3, 120, 160, seed=11)
    unrelated = random_sequences(12, 60, 150, seed=12)
    leaky = {
        "exact": eval_seqs[0],
        "mut30": _mutate(eval_seqs[1], 0.30, 1),  # ~70% identity: must go
        "inside": random_sequences(1, 40, 40, 5)[0] + eval_seqs[2] + random_sequences(1, 200, 200, 6)[0],
    }
    far = {"mut75": _mutate(eval_seqs[1], 0.75, 2)}  # ~25% identity: must stay
    corpus = tmp_path / "corpus.fasta"
    corpus.write_text(
        "".join(f">leak|{k}\n{v}\n" for k, v in leaky.items())
        + "".join(f">far|{k}\n{v}\n" for k, v in far.items())
        + "".join(f">clean|u{i}\n{s}\n" for i, s in enumerate(unrelated))
    )
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "test.tsv").write_text("id\tsequence\n" + "".join(f"e{i}\t{s}\n" for i, s in enumerate(eval_seqs)))
    cfg = DataConfig(corpus=corpus, eval=[EvalSetConfig(path=ev)], validation_fraction=0.2, min_length=20)
    ds = prepare_dataset(cfg, tmp_path / "run", log=False)
    kept = {i.id for i in ds.train + ds.val}
    assert ds.stats["removed_by_eval_overlap"] == 3
    assert ds.stats["removed_by_source"] == {"leak": 3}
    assert "far|mut75" in kept and len(kept) == 13

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("mmseqs ran again although its result is cached")

    monkeypatch.setattr(data_mod, "find_eval_overlap", boom)
    again = prepare_dataset(cfg, tmp_path / "run", log=False)
    assert [i.key for i in again.train] == [i.key for i in ds.train]


def test_subset_split_and_crop_are_deterministic(tmp_path: Path) -> None:
    seqs = random_sequences(60, 20, 150, seed=3)
    corpus = write_corpus(tmp_path / "c.fasta", seqs)
    base = DataConfig(corpus=corpus, max_length=100, validation_fraction=0.25, max_sequences=40)
    a = prepare_dataset(base, tmp_path / "run", log=False)
    b = prepare_dataset(base, tmp_path / "run", log=False)
    assert [i.key for i in a.train] == [i.key for i in b.train] and [i.key for i in a.val] == [
        i.key for i in b.val
    ]
    assert len(a.train) + len(a.val) == 40
    assert not {i.key for i in a.train} & {i.key for i in a.val}
    assert all(len(i.sequence) <= 100 and i.key == sequence_key(i.sequence) for i in a.train + a.val)
    assert a.stats["cropped"] == sum(
        1 for s in seqs if len(s) > 100 and any(s[:100] == i.sequence for i in a.train + a.val)
    )
    bigger = prepare_dataset(base.model_copy(update={"max_sequences": 50}), tmp_path / "run", log=False)
    assert {i.key for i in a.train} <= {i.key for i in bigger.train}  # growing the subset keeps the old one
    assert {i.key for i in a.val} <= {i.key for i in bigger.val}
    other = prepare_dataset(base.model_copy(update={"seed": 99}), tmp_path / "run", log=False)
    assert {i.key for i in other.train} != {i.key for i in a.train}
