"""The long-sequence measurement (protembed_bench.long_sequences): its poolings mean what they say, it
measures the server's own windows and pooling, and the CLI writes its report from cached teacher vectors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from protembed.windows import plan_windows, pool_windows
from protembed_bench import long_sequences as ls

MODEL = Path(__file__).resolve().parents[2] / "models" / "protembed-student-v1"
AMINO = "ACDEFGHIKLMNPQRSTVWY"
PLANS = [(length, overlap) for length in (513, 700, 1100, 2999) for overlap in (0, 64, 128, 256)]


def residue_totals(weights: list[np.ndarray], windows: list[ls.Window], length: int) -> np.ndarray:
    total = np.zeros(length)
    for w, wt in zip(windows, weights, strict=True):
        total[w.start : w.end] += wt
    return total


@pytest.mark.parametrize(("length", "overlap"), PLANS)
def test_residue_level_poolings_count_every_residue_once(length: int, overlap: int) -> None:
    windows = plan_windows(length, 512, overlap)
    for name in ("stitched", "residue_mean", "crossfade"):
        totals = residue_totals(ls.POOLINGS[name](windows, length), windows, length)
        assert np.allclose(totals, 1.0), name


@pytest.mark.parametrize(("length", "overlap"), PLANS)
def test_lsq_windows_is_at_least_as_even_as_owned_windows(length: int, overlap: int) -> None:
    windows = plan_windows(length, 512, overlap)
    spread = {}
    for name in ("owned_windows", "lsq_windows"):
        weights = ls.POOLINGS[name](windows, length)
        totals = residue_totals(weights, windows, length)
        spread[name] = float(np.std(totals / totals.mean()))
    assert spread["lsq_windows"] <= spread["owned_windows"] + 1e-9


def test_context_free_features_pool_to_the_whole_mean_only_when_each_residue_counts_once() -> None:
    """If a residue's features did not depend on its window, the residue-level poolings would give the
    whole-sequence mean exactly, and poolings that count the overlap twice would not."""
    rng = np.random.default_rng(0)
    length = 1100
    per_residue = rng.normal(size=(length, 5)) + np.linspace(0, 3, length)[:, None]
    whole = per_residue.mean(axis=0)
    windows = plan_windows(length, 512, 256)
    feats = [per_residue[w.start : w.end] for w in windows]
    for name, weigh in ls.POOLINGS.items():
        weights = weigh(windows, length)
        pooled = sum((wt[:, None] * f).sum(0) for wt, f in zip(weights, feats, strict=True))
        pooled = np.asarray(pooled) / sum(float(wt.sum()) for wt in weights)
        exact = name in ("stitched", "residue_mean", "crossfade")
        assert np.allclose(pooled, whole) == exact, name


@pytest.mark.parametrize(("length", "overlap"), PLANS)
def test_stitched_is_the_servers_weighting_of_owned_only_window_means(length: int, overlap: int) -> None:
    """What the report's 'model change' claims: if each window were pooled over its owned residues only,
    the server's pool_windows weights would give `stitched` exactly."""
    rng = np.random.default_rng(length * overlap + 1)
    windows = plan_windows(length, 512, overlap)
    feats = [rng.normal(size=(w.end - w.start, 4)) for w in windows]
    owned_means = [
        f[w.own_start - w.start : w.own_end - w.start].mean(0).astype(np.float32)
        for w, f in zip(windows, feats, strict=True)
    ]
    served = pool_windows(windows, owned_means, per_residue=False)
    weights = ls.POOLINGS["stitched"](windows, length)
    mine = sum((wt[:, None] * f).sum(0) for wt, f in zip(weights, feats, strict=True))
    mine = np.asarray(mine) / sum(float(wt.sum()) for wt in weights)
    assert np.abs(mine - served).max() < 1e-5


@pytest.mark.parametrize(("length", "overlap"), PLANS)
def test_owned_windows_is_the_servers_pooling(length: int, overlap: int) -> None:
    rng = np.random.default_rng(length + overlap)
    windows = plan_windows(length, 512, overlap)
    feats = [rng.normal(size=(w.end - w.start, 4)) for w in windows]
    served = pool_windows(windows, [f.mean(0).astype(np.float32) for f in feats], per_residue=False)
    weights = ls.POOLINGS["owned_windows"](windows, length)
    mine = sum((wt[:, None] * f).sum(0) for wt, f in zip(weights, feats, strict=True))
    mine = np.asarray(mine) / sum(float(wt.sum()) for wt in weights)
    assert np.abs(mine - served).max() < 1e-5


@pytest.mark.parametrize("length", [513, 1024, 1025, 1600, 2999])
def test_disjoint_windows_are_few_equal_and_cover_each_residue_once(length: int) -> None:
    windows = ls.disjoint_windows(length, 512)
    assert len(windows) == -(-length // 512)
    assert [i for w in windows for i in range(w.start, w.end)] == list(range(length))
    sizes = [w.end - w.start for w in windows]
    assert max(sizes) <= 512 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("length", "overlap"), PLANS)
def test_even_windows_are_fewest_and_share_at_least_the_overlap(length: int, overlap: int) -> None:
    windows = ls.even_windows(length, 512, overlap)
    assert len(windows) <= len(plan_windows(length, 512, overlap))
    assert [i for w in windows for i in range(w.own_start, w.own_end)] == list(range(length))
    assert windows[0].start == 0 and windows[-1].end == length
    assert all(w.end - w.start == 512 for w in windows)
    assert all(a.end - b.start >= overlap for a, b in itertools.pairwise(windows))
    fewer = ls.even_windows(length, 512, overlap)[:-1]
    assert not fewer or fewer[-1].end < length  # no plan with one window less reaches the end


def _proteins(rng: np.random.Generator, lengths: list[int], source: str) -> list[ls.Protein]:
    seqs = ["".join(rng.choice(list(AMINO), n)) for n in lengths]
    return [ls.Protein(f"{source}{i}", source, s) for i, s in enumerate(seqs)]


def test_select_stratifies_by_length_and_draws_the_corpus_share() -> None:
    rng = np.random.default_rng(1)
    deeploc = _proteins(rng, [300, 600, 700, 800, 900, 1100, 1200, 1600, 2000, 3500] * 2, "deeploc_test")
    corpus = _proteins(rng, [520, 530, 780, 790, 1030, 1040, 1540, 1550], "corpus")
    chosen = ls.select(deeploc, corpus, per_bin=3, corpus_share=1 / 3, seed=7)
    assert chosen == ls.select(deeploc, corpus, per_bin=3, corpus_share=1 / 3, seed=7)
    bins = [ls.bin_of(len(p.sequence)) for p in chosen]
    assert sorted(bins) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert sum(p.source == "corpus" for p in chosen) == 4
    assert len({p.sequence for p in chosen}) == len(chosen)


@pytest.fixture(scope="module")
def runner() -> ls.StudentRunner:
    return ls.StudentRunner(MODEL, max_length=1200)


def test_rebuilt_student_matches_the_shipped_onnx(runner: ls.StudentRunner) -> None:
    rng = np.random.default_rng(2)
    assert runner.onnx_parity(["".join(rng.choice(list(AMINO), n)) for n in (40, 512)]) < 1e-4


def test_student_vectors_cover_every_method(runner: ls.StudentRunner) -> None:
    rng = np.random.default_rng(3)
    seq = "".join(rng.choice(list(AMINO), 1100))
    vecs = ls.student_vectors(runner, seq, [0, 128])
    expected = {"whole", "truncate512", "chunk:disjoint"} | {
        f"chunk:{p}@{o}{plan}" for p in ls.POOLINGS for o in (0, 128) for plan in ("", "/even")
    }
    assert set(vecs) == expected
    for per_teacher in vecs.values():
        assert {k: v.shape for k, v in per_teacher.items()} == {"unirep1900": (1900,), "near": (256,)}
        assert all(np.isfinite(v).all() for v in per_teacher.values())
    # truncation is the first window's vector; pooled variants differ from it
    assert ls.cosine(vecs["truncate512"]["near"], vecs["chunk:owned_windows@128"]["near"]) < 0.99999


@pytest.mark.slow
def test_cli_reports_from_cached_teacher_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    data = tmp_path / "data"
    (data / "eval" / "deeploc").mkdir(parents=True)
    (data / "corpus").mkdir()
    deeploc = _proteins(rng, [530, 560, 800, 820, 1030, 1050, 1540, 1560], "deeploc_test")
    corpus = _proteins(rng, [100, 200, 300, 400, 520, 790], "corpus")
    with open(data / "eval" / "deeploc" / "test.tsv", "w") as f:
        f.write("id\tsequence\tlocation\tmembrane\n")
        f.writelines(f"{p.id}\t{p.sequence}\tCytoplasm\tS\n" for p in deeploc)
    (data / "corpus" / "corpus.fasta").write_text("".join(f">{p.id}\n{p.sequence}\n" for p in corpus))
    cache = ls.TeacherCache(tmp_path / "cache")
    everything = deeploc + corpus + ls.stats_sample(corpus, 4, 512, seed=7)
    for p in everything:  # stand-in teacher vectors: the CLI's arithmetic, not the teachers, is tested
        cache.put("unirep1900", p, rng.normal(size=1900).astype(np.float32))
        cache.put("near", p, rng.normal(size=256).astype(np.float32))
    out = tmp_path / "report" / "long"
    argv = ["--data", str(data), "--cache", str(cache.root), "--out", str(out), "--per-bin", "2"]
    argv += ["--stats-sample", "4", "--overlaps", "0,128", "--cached-only"]
    assert ls.main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["n_sequences"] == 8
    assert {r["bin"] for r in result["records"]} == {0, 1, 2, 3}
    assert "chunk:owned_windows@128" in dict(result["ranking"])
    text = out.with_suffix(".md").read_text()
    assert "python -m protembed_bench.long_sequences" in text and "--cached-only" in text
    assert "## Decision" in text and "Default chunk_overlap:" in text
    before = out.with_suffix(".md").read_text()
    assert ls.main(["--from-json", "--out", str(out)]) == 0  # rewrites the same report, measuring nothing
    assert out.with_suffix(".md").read_text().split("## Result")[1] == before.split("## Result")[1]
    assert out.with_suffix(".png").stat().st_size > 0


def test_cli_refuses_a_missing_stats_sample(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "eval" / "deeploc").mkdir(parents=True)
    (data / "corpus").mkdir()
    (data / "eval" / "deeploc" / "test.tsv").write_text("id\tsequence\tlocation\tmembrane\nP1\tMKV\tX\tS\n")
    (data / "corpus" / "corpus.fasta").write_text(">a\nMKVLA\n>b\nMKVLG\n")
    argv = ["--data", str(data), "--cache", str(tmp_path / "c"), "--per-bin", "1", "--stats-sample", "2"]
    with pytest.raises(SystemExit, match="standardization sample is not fully cached"):
        ls.main([*argv, "--cached-only", "--out", str(tmp_path / "o")])
