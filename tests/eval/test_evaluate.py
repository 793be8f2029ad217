"""`protembed evaluate` pieces and its smoke run on the tiny ONNX model with tiny PyTorch teachers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_TEACHERS

from protembed.cli import main
from protembed_bench import evaluate as ev


def test_tasks_subsets_are_deterministic_and_filtered(eval_data_dir: Path) -> None:
    a = ev.load_tasks(eval_data_dir, list(ev.TASKS), 30, 20, crop=64, seed=0)
    b = ev.load_tasks(eval_data_dir, list(ev.TASKS), 30, 20, crop=64, seed=0)
    c = ev.load_tasks(eval_data_dir, list(ev.TASKS), 30, 20, crop=64, seed=1)
    assert a["deepsol"].train == b["deepsol"].train and a["deepsol"].train != c["deepsol"].train
    assert a["deepsol"].sizes == {
        "train_available": 80,
        "train_used": 30,
        "test_available": 50,
        "test_used": 20,
    }
    assert max(len(s) for t in a.values() for s in t.train.sequences) <= 64
    membrane = a["deeploc_membrane"]
    assert "U" not in membrane.train.labels + membrane.test.labels
    # the membrane task is the location task's subset minus U rows: one embedding pass serves both
    assert set(membrane.train.sequences) <= set(a["deeploc"].train.sequences)
    assert membrane.sizes["train_used"] < a["deeploc"].sizes["train_used"]


def test_bad_rows_are_named(tmp_path: Path, eval_data_dir: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\tsequence\tsoluble\nx\tMKT1A\t1\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:2: bad sequence.*'1' at position 4"):
        ev.read_tsv(bad, ["soluble"], 100)
    with pytest.raises(ValueError, match="missing column"):
        ev.read_tsv(bad, ["capsid"], 100)
    with pytest.raises(ValueError, match="unknown task"):
        ev.load_tasks(eval_data_dir, ["nope"], 1, 1, 64, 0)


def test_teacher_features_use_and_fill_the_cache(tmp_path: Path) -> None:
    seqs = ["MKTAYIAKQR", "MVLSPADKTNVKAAW", "GGGGSGGGGS", "MKTAYIAKQR"[:8]]
    spec = ev.parse_teacher(TINY_TEACHERS[0])
    first = ev.teacher_features(spec, seqs, tmp_path, 4096, progress=False)
    assert first.note.startswith("0 of 4 from cache")
    assert (tmp_path / "alpha.h5").is_file()
    second = ev.teacher_features(spec, seqs, tmp_path, 4096, progress=False)
    assert second.note.startswith("4 of 4 from cache")
    np.testing.assert_allclose(first.matrix, second.matrix)
    direct = spec.load().embed(seqs).per_protein
    np.testing.assert_allclose(second.matrix, direct, atol=2e-3)  # float16 storage


def test_teacher_cache_with_residues_is_not_filled_with_eval_residues(tmp_path: Path) -> None:
    from protembed_distill.data.dataset import Item, sequence_key
    from protembed_distill.teacher_cache import EmbeddingStore, embed_into

    spec = ev.parse_teacher(TINY_TEACHERS[0])
    teacher = spec.load()
    train_seq = "MKTAYIAKQRQISFVKSHFSRQ"
    with EmbeddingStore(tmp_path / "alpha.h5") as store:  # a distillation cache with per-residue states
        embed_into(
            teacher,
            [Item("c|1", "c", train_seq, sequence_key(train_seq))],
            store,
            per_residue=True,
            batch_tokens=1024,
            progress=False,
        )
    fs = ev.teacher_features(spec, [train_seq, "MVLSPADKTNVKAAW"], tmp_path, 1024, progress=False)
    assert fs.note.startswith("1 of 2 from cache")
    assert (tmp_path / "alpha.eval.h5").is_file()  # the new one went to the per-protein sibling
    with EmbeddingStore(tmp_path / "alpha.h5", mode="r") as store:
        assert store.count == 1


def test_evaluate_smoke_command(
    tmp_path: Path, tiny_model_dir: Path, eval_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import protembed_distill.teacher_cache as teacher_cache

    budgets: list[int | None] = []
    real_embed_into = teacher_cache.embed_into

    def embed_into(*args: Any, **kwargs: Any) -> Any:
        budgets.append(kwargs.get("batch_tokens"))
        return real_embed_into(*args, **kwargs)

    monkeypatch.setattr(teacher_cache, "embed_into", embed_into)
    rc = main(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--data-dir",
            str(eval_data_dir),
            "--teachers",
            *TINY_TEACHERS,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--reports",
            str(tmp_path / "reports"),
            "--smoke",
            "--threads",
            "1",
            "--batch-tokens",
            "512",
            "--no-progress",
        ]
    )
    assert rc == 0
    # --batch-tokens is the student's: each teacher batches at its own call size (Teacher.call_tokens)
    assert budgets and set(budgets) == {None}
    out = tmp_path / "reports" / "smoke"
    report = json.loads((out / "evaluate.json").read_text())
    assert report["kind"] == "evaluate" and report["smoke"] is True
    assert report["settings"]["max_train"] == 40 and report["settings"]["max_test"] == 30
    assert set(report["tasks"]) == set(ev.TASKS)
    capsid = report["tasks"]["capsid"]
    models = set(capsid["results"])
    assert {"composition", "student", "student:int8", "teacher:alpha", "teacher:beta", "head:alpha"} <= models
    assert set(capsid["results"]["student"]["metrics"]) == {"mcc", "accuracy"}
    for task in report["tasks"].values():
        for res in task["results"].values():
            for m in res["metrics"].values():
                assert m["low"] <= m["point"] <= m["high"]
    # synthetic labels follow composition, so every probe is far above chance
    assert report["tasks"]["deepsol"]["results"]["composition"]["metrics"]["accuracy"]["point"] > 0.8
    assert report["tasks"]["deepsol"]["best_teacher"] in ("teacher:alpha", "teacher:beta")
    ret = report["tasks"]["deepsol"]["retention"]["student"]
    assert (
        ret["low"] <= ret["point"] <= ret["high"] and ret["vs"] == report["tasks"]["deepsol"]["best_teacher"]
    )
    ss = report["secondary_structure"]
    assert set(ss["results"]) == {"student:residues", "window_onehot"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["retention"] == report["retention"] and set(summary["retention"]) <= set(ev.TASKS)
    md = (out / "evaluate.md").read_text()
    assert "## Retention" in md and "teacher:alpha" in md


def test_evaluate_refuses_bad_arguments(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--teachers",
            "alpha=nocolon",
            "--reports",
            str(tmp_path),
        ]
    )
    assert rc == 2 and "NAME=package.module:factory" in capsys.readouterr().err
    rc = main(["evaluate", "--model", str(tmp_path / "missing"), "--reports", str(tmp_path)])
    assert rc == 2 and "model" in capsys.readouterr().err


def test_embed_only_fills_the_cache_for_exactly_the_probed_sequences(
    tmp_path: Path, tiny_model_dir: Path, eval_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from protembed.artifact import read_model_card
    from protembed_distill.data.dataset import sequence_key
    from protembed_distill.teacher_cache import EmbeddingStore

    cache, reports = tmp_path / "cache", tmp_path / "reports"
    common = [
        "evaluate",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(eval_data_dir),
        "--cache-dir",
        str(cache),
        "--reports",
        str(reports),
        "--tasks",
        "deepsol",
        "deeploc_membrane",
        "--smoke",
        "--threads",
        "1",
        "--no-progress",
    ]
    assert main([*common, "--teachers", *TINY_TEACHERS, "--embed-only"]) == 0
    assert not reports.exists()  # no probes, no report
    crop = read_model_card(tiny_model_dir).max_length
    tasks = ev.load_tasks(eval_data_dir, ["deepsol", "deeploc_membrane"], 40, 30, crop, seed=0)
    unique = {s for t in tasks.values() for s in (*t.train.sequences, *t.test.sequences)}
    printed = capsys.readouterr().out
    for name in ("alpha", "beta"):
        assert f"{name}: {len(unique)} sequences, 0 of {len(unique)} from cache" in printed
        with EmbeddingStore(cache / f"{name}.h5", mode="r") as store:
            assert store.count == len(unique)
            assert set(store.index()) == {sequence_key(s) for s in unique}

    # The probes then run without the teachers: a factory that cannot even be imported is never called.
    unloadable = ["alpha=eval_tiny_teachers:no_such_factory", "beta=eval_tiny_teachers:no_such_factory"]
    rc = main([*common, "--teachers", *unloadable, "--no-int8", "--no-secondary-structure"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((reports / "smoke" / "evaluate.json").read_text())
    assert report["unique_sequences"] == len(unique)
    n = len(unique)
    for name in ("alpha", "beta"):
        assert report["models"][f"teacher:{name}"]["note"].startswith(f"{n} of {n} from cache")
