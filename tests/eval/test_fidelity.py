"""The fidelity evaluation's parts: stratified teacher order, the student as served (windows, cache),
paired per-residue and per-protein tables."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from protembed.windows import plan_windows
from protembed_bench.fidelity.proteins import probe_task
from protembed_bench.fidelity.residues import q3_table, window_onehot
from protembed_bench.fidelity.sets import ProteinSet, sequence_key, teacher_order
from protembed_bench.fidelity.student_vectors import ServedStudent
from tiny_model import reference_embeddings


def _seq(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n))


def test_teacher_order_prefixes_are_stratified_and_cover_every_row() -> None:
    rng = np.random.default_rng(0)
    train_y = ["a"] * 300 + ["b"] * 100
    test_y = ["a"] * 50 + ["b"] * 150
    s = ProteinSet(
        "t", "t", "y", [_seq(rng, 20) for _ in train_y], train_y, [_seq(rng, 20) for _ in test_y], test_y
    )
    other = ProteinSet("u", "u", "y", ["MK"] * 10, ["x"] * 10, ["MV"] * 5, ["x"] * 5)
    order = teacher_order({"t": s, "u": other})
    assert sorted(order) == sorted(
        [("t", "train", i) for i in range(400)]
        + [("t", "test", i) for i in range(200)]
        + [("u", "train", i) for i in range(10)]
        + [("u", "test", i) for i in range(5)]
    )
    # the first 40 train rows of t hold its labels in their 3:1 share; the first 20 test rows 1:3
    first_train = [s.train_y[i] for name, split, i in order if (name, split) == ("t", "train")][:40]
    first_test = [s.test_y[i] for name, split, i in order if (name, split) == ("t", "test")][:20]
    assert Counter(first_train) == {"a": 30, "b": 10}
    assert Counter(first_test) == {"a": 5, "b": 15}
    # round-robin: the small set's rows come early, not after all of t
    assert max(k for k, row in enumerate(order) if row[0] == "u") < 40


def test_teacher_job_covers_the_sets_it_is_given_first_one_whole_set_at_a_time() -> None:
    from protembed_bench.fidelity.teacher_vectors import protein_order

    rng = np.random.default_rng(2)

    def pset(name: str, n: int) -> ProteinSet:
        ys = ["a", "b"] * (n // 2)
        return ProteinSet(name, name, "y", [_seq(rng, 12) for _ in ys], ys, [_seq(rng, 12) for _ in ys], ys)

    sets = {"t": pset("t", 40), "u": pset("u", 20), "v": pset("v", 10)}
    rows = {n: set(s.train + s.test) for n, s in sets.items()}
    first = protein_order(sets, ["u", "t"], 0)
    assert set(first[:40]) == rows["u"] and set(first[40:]) == rows["t"]  # u whole before t; v not asked
    assert sorted(protein_order(sets, None, 0)) == sorted(rows["t"] | rows["u"] | rows["v"])
    with pytest.raises(SystemExit, match=r"unknown set.*w; known: t, u, v"):
        protein_order(sets, ["w"], 0)


def test_served_student_pools_long_sequences_as_the_server_and_caches(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    # the tiny model's context is 64, below the server's default overlap: a test overlap of 16
    student = ServedStudent(tiny_model_dir, "fp32", tmp_path, overlap=16)
    limit = student.card.max_length
    short, long = _seq(rng, limit // 2), _seq(rng, 3 * limit + 7)
    out = student.embed([short, long], ["student", "residues"])
    ref = reference_embeddings(tiny_model_dir, short)
    np.testing.assert_allclose(out["student"][0], ref["student"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["residues"][0], ref["residue_states"], atol=1e-3)  # stored as fp16
    # the long one: every residue once, each from the window that owns it; the protein vector the
    # residue-weighted mean of the windows' vectors
    windows = plan_windows(len(long), limit, 16)
    assert len(windows) > 1
    assert out["residues"][1].shape[0] == len(long)
    refs = [reference_embeddings(tiny_model_dir, long[w.start : w.end]) for w in windows]
    for w, r in zip(windows, refs, strict=True):
        np.testing.assert_allclose(
            out["residues"][1][w.own_start : w.own_end],
            r["residue_states"][w.own_start - w.start : w.own_end - w.start],
            atol=1e-3,
        )
    weights = np.array([w.own_end - w.own_start for w in windows], dtype=np.float64)
    pooled = sum(wt * r["student"] for wt, r in zip(weights, refs, strict=True)) / weights.sum()
    np.testing.assert_allclose(out["student"][1], pooled, rtol=1e-4, atol=1e-5)
    assert student.cached_keys("student") == {sequence_key(short), sequence_key(long)}
    # a second instance answers from the cache alone, with the same arrays
    again = ServedStudent(tiny_model_dir, "fp32", tmp_path, overlap=16)
    again.session = None  # would fail if it ran the model
    cached = again.embed([long], ["student", "residues"])
    np.testing.assert_array_equal(cached["student"][0], out["student"][1])
    np.testing.assert_array_equal(cached["residues"][0], out["residues"][1])


def test_unknown_output_names_the_model_and_its_outputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    student = ServedStudent(tiny_model_dir, "fp32", tmp_path)
    with pytest.raises(ValueError, match="no output 'gamma'"):
        student.embed(["ACD"], ["gamma"])


def test_q3_table_orders_informative_features_above_noise_with_paired_ratios() -> None:
    rng = np.random.default_rng(2)
    train_lab = ["".join(rng.choice(list("CEH"), 60)) for _ in range(40)]
    test_lab = ["".join(rng.choice(list("CEH"), 60)) for _ in range(30)]

    def feats(labels: list[str], noise: float) -> list[np.ndarray]:
        return [
            np.stack([np.eye(3)["CEH".index(c)] for c in lab]) + noise * rng.normal(size=(len(lab), 3))
            for lab in labels
        ]

    table = q3_table(
        {
            "good": (feats(train_lab, 0.1), feats(test_lab, 0.1)),
            "noise": (
                [rng.normal(size=(60, 3)) for _ in train_lab],
                [rng.normal(size=(60, 3)) for _ in test_lab],
            ),
        },
        train_lab,
        test_lab,
        resamples=200,
    )
    good, noise = table["results"]["good"]["score"], table["results"]["noise"]["score"]
    assert good["point"] > 0.95 and noise["point"] < 0.5
    ratio = table["ratios"]["good"]["noise"]
    assert ratio["low"] > 1.5 and ratio["point"] == pytest.approx(good["point"] / noise["point"])
    assert table["residues"] == {"train_used": 2400, "train_available": 2400, "test": 1800}


def test_q3_table_refuses_misaligned_features_and_unknown_labels() -> None:
    lab = ["CEH", "HHE"]
    ok = [np.zeros((3, 2)), np.zeros((3, 2))]
    with pytest.raises(ValueError, match="short: 5/6"):
        q3_table({"short": ([np.zeros((3, 2)), np.zeros((2, 2))], ok)}, lab, lab)
    with pytest.raises(ValueError, match="secondary_structure label 'X' is not one of CEH"):
        q3_table({"f": (ok, ok)}, ["CEX", "HHE"], lab)


def _binding_signal(labels: list[str], noise: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Per chain, one feature per residue: 1 where it binds, 0 where not, plus Gaussian ``noise``."""
    return [
        np.array([[float(c != "0")] for c in lab]) + noise * rng.normal(size=(len(lab), 1)) for lab in labels
    ]


def test_binding_table_scores_mcc_per_chain_bootstrap_not_accuracy() -> None:
    """Binding is rare: a feature blind to it scores MCC 0 although its accuracy is ~0.9, and a feature
    that sees it scores MCC near 1, with an interval from resampled chains."""
    from protembed_bench.fidelity.residues import BINDING, residue_table

    rng = np.random.default_rng(5)
    train_lab = ["".join(rng.choice(list("000000000134"), 50)) for _ in range(40)]
    test_lab = ["".join(rng.choice(list("000000000134"), 50)) for _ in range(30)]

    def sees(labels: list[str]) -> list[np.ndarray]:
        return _binding_signal(labels, 0.3, rng)

    table = residue_table(
        {
            "sees": (sees(train_lab), sees(test_lab)),
            "blind": (
                [rng.normal(size=(50, 2)) for _ in train_lab],
                [rng.normal(size=(50, 2)) for _ in test_lab],
            ),
        },
        train_lab,
        test_lab,
        BINDING,
        resamples=200,
    )
    assert table["task"] == "binding" and table["metric"] == "MCC"
    sees_mcc, blind_mcc = table["results"]["sees"]["score"], table["results"]["blind"]["score"]
    assert sees_mcc["point"] > 0.8 and sees_mcc["low"] < sees_mcc["point"] < sees_mcc["high"]
    assert abs(blind_mcc["point"]) < 0.1
    with pytest.raises(ValueError, match="binding label '9' is not one of 01234567"):
        residue_table({"sees": (sees(train_lab), sees(test_lab))}, ["09", *train_lab[1:]], test_lab, BINDING)


def test_binding_probe_weighs_the_rare_class() -> None:
    """A weak signal for a rare class: an unweighted probe predicts "not binding" everywhere (MCC 0),
    the class-balanced one the binding task uses finds it."""
    from dataclasses import replace

    from protembed_bench.fidelity.residues import BINDING, residue_table

    rng = np.random.default_rng(8)
    train_lab = ["".join(rng.choice(list("0000000000000004"), 100)) for _ in range(60)]
    test_lab = ["".join(rng.choice(list("0000000000000004"), 100)) for _ in range(40)]

    def weak(labels: list[str]) -> list[np.ndarray]:
        return _binding_signal(labels, 1.2, rng)

    feats = {"weak": (weak(train_lab), weak(test_lab))}
    plain = residue_table(feats, train_lab, test_lab, replace(BINDING, balanced=False), resamples=50)
    balanced = residue_table(feats, train_lab, test_lab, BINDING, resamples=50)
    assert plain["results"]["weak"]["score"]["point"] < 0.1
    assert balanced["results"]["weak"]["score"]["point"] > 0.12


def test_shipped_binding_set_loads_with_one_label_per_residue() -> None:
    from protembed_bench.fidelity.sets import load_binding_chains

    ch = load_binding_chains()
    assert (len(ch.train), len(ch.test)) == (1060, 300)
    assert all(len(s) == len(y) for s, y in zip(ch.train + ch.test, ch.train_y + ch.test_y, strict=True))
    share = sum(c != "0" for y in ch.test_y for c in y) / sum(map(len, ch.test_y))
    assert 0.05 < share < 0.2  # binding residues are a minority, as the publication reports


def test_window_onehot_marks_the_residue_and_its_neighbours() -> None:
    from protembed import tokenizer

    w = window_onehot("ACD", half=1).reshape(3, 3, -1)
    ids = tokenizer.encode("ACD")
    assert w.sum() == 9  # one token per window slot; past the ends the slot holds the pad token
    assert w[:, 1].argmax(axis=1).tolist() == ids.tolist()  # the centre is the residue itself
    assert w[0, 0].argmax() == tokenizer.PAD_ID and w[2, 2].argmax() == tokenizer.PAD_ID
    assert w[1, 0].argmax() == ids[0] and w[1, 2].argmax() == ids[2]


def test_probe_task_retention_is_paired_against_the_best_teacher() -> None:
    rng = np.random.default_rng(3)
    y_train = list(rng.choice(["p", "q"], 200))
    y_test = list(rng.choice(["p", "q"], 150))

    def signal(y: list[str], noise: float) -> np.ndarray:
        return np.array([[1.0 if v == "p" else -1.0] for v in y]) + noise * rng.normal(size=(len(y), 1))

    feats = {
        "teacher:strong": (signal(y_train, 0.3), signal(y_test, 0.3)),
        "teacher:weak": (signal(y_train, 2.0), signal(y_test, 2.0)),
        "student": (signal(y_train, 0.6), signal(y_test, 0.6)),
    }
    r = probe_task(
        "capsid", feats, y_train, y_test, teachers=["teacher:strong", "teacher:weak"], resamples=200
    )
    ret = r["retention"]["student"]
    assert set(ret) == {"accuracy", "mcc"}
    assert ret["accuracy"]["vs"] == "teacher:strong"
    acc = r["results"]
    assert ret["accuracy"]["point"] == pytest.approx(
        acc["student"]["accuracy"]["point"] / acc["teacher:strong"]["accuracy"]["point"]
    )
    assert ret["accuracy"]["low"] <= ret["accuracy"]["point"] <= ret["accuracy"]["high"]
    assert "teacher:weak" not in r["retention"]
    for name, res in r["results"].items():  # recall by class: the accuracy splits into its classes
        recall = res["recall_by_class"]
        shares = [y_test.count(c) / len(y_test) for c in recall]
        assert sum(v * w for v, w in zip(recall.values(), shares, strict=True)) == pytest.approx(
            res["accuracy"]["point"]
        ), name
    assert "vs_reference" not in r  # one model: nothing to compare it with
    # kept predictions of one class only: the teacher's MCC is 0, so there is no MCC ratio to it
    flat = probe_task(
        "capsid",
        {"student": feats["student"]},
        y_train,
        y_test,
        teachers=["teacher:flat"],
        kept={"teacher:flat": [0] * len(y_test)},
        resamples=50,
    )
    assert flat["results"]["teacher:flat"]["mcc"]["point"] == 0.0
    assert set(flat["retention"]["student"]) == {"accuracy"}

    feats["student:new"] = (signal(y_train, 2.0), signal(y_test, 2.0))
    both = probe_task(
        "capsid",
        feats,
        y_train,
        y_test,
        teachers=["teacher:strong", "teacher:weak"],
        reference="student",
        candidates=["student:new"],
        resamples=200,
    )
    new = both["vs_reference"]["ratios"]["student:new"]["accuracy"]
    res = both["results"]
    assert both["vs_reference"]["reference"] == "student"
    assert new["point"] == pytest.approx(
        res["student:new"]["accuracy"]["point"] / res["student"]["accuracy"]["point"]
    )
    assert new["high"] < 1.0  # the noisier model is worse, and the paired interval says so


def test_cosine_table_scores_each_row_against_its_own_teacher_vector() -> None:
    from protembed_bench.fidelity.proteins import cosine_table

    rng = np.random.default_rng(5)
    teacher = rng.normal(size=(200, 8))
    noisy = teacher + 0.5 * rng.normal(size=teacher.shape)
    lengths = [100] * 50 + [400] * 100 + [900] * 50
    t = cosine_table(
        {"same": (2.0 * teacher, teacher), "noisy": (noisy, teacher), "shuffled": (teacher[::-1], teacher)},
        lengths,
    )
    assert {b: v["rows"] for b, v in t["noisy"]["by_length"].items()} == {
        "1-256": 50,
        "257-512": 100,
        ">512": 50,
    }
    assert t["same"]["by_length"][">512"]["mean"] == pytest.approx(1.0)
    assert t["same"]["mean"]["point"] == pytest.approx(1.0) and t["same"]["share_at_least_0.90"] == 1.0
    assert 0.6 < t["noisy"]["mean"]["low"] < t["noisy"]["mean"]["point"] < t["noisy"]["mean"]["high"] < 0.99
    assert abs(t["shuffled"]["mean"]["point"]) < 0.15 and t["shuffled"]["share_at_least_0.90"] < 0.05
    with pytest.raises(ValueError, match="bad: predicted"):
        cosine_table({"bad": (teacher[:, :4], teacher)}, lengths)


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")


def _fidelity_fixture(tmp_path: Path, prefix: int) -> tuple[Path, Path, Path]:
    """Sets on disk (within the tiny model's context: the server's overlap exceeds it), the per-residue
    chains, and teacher caches as the teacher job writes them, for the first ``prefix`` sequences of
    its order. Returns (data dir, binding file, cache dir)."""
    from protembed_bench.fidelity.sets import (
        load_binding_chains,
        load_chains,
        load_protein_sets,
        teacher_order,
    )
    from protembed_bench.fidelity.teacher_vectors import TEACHERS
    from protembed_distill.teacher_cache import EmbeddingStore

    rng = np.random.default_rng(4)
    data = tmp_path / "data"

    def rows(n: int, labels: list[str]) -> list[list[str]]:
        return [[f"r{i}", _seq(rng, int(rng.integers(20, 64))), labels[i % len(labels)]] for i in range(n)]

    for split, n in (("train", 150), ("test", 120)):
        deeploc = rows(n, ["Nucleus", "Cytoplasm", "Membrane"])
        _write_tsv(
            data / "eval" / "deeploc" / f"{split}.tsv",
            ["id", "sequence", "location", "membrane"],
            [[*r, "MSU"[i % 3]] for i, r in enumerate(deeploc)],
        )
        _write_tsv(
            data / "eval" / "deepsol" / f"{split}.tsv", ["id", "sequence", "soluble"], rows(n, ["0", "1"])
        )
        _write_tsv(
            data / "eval" / "capsid" / f"{split}.tsv", ["id", "sequence", "capsid"], rows(n, ["0", "1"])
        )
    chains = []
    for i in range(24):
        s = _seq(rng, int(rng.integers(30, 64)))
        chains.append(
            [f"c{i}", s, "".join(rng.choice(list("CEH"), len(s))), "train" if i < 14 else "test", "False"]
        )
    _write_tsv(
        data / "eval" / "secondary_structure" / "sampled.tsv",
        ["id", "sequence", "dssp3", "set", "validation"],
        chains,
    )

    binding = tmp_path / "bind.tsv"
    bind_rows = []
    brng = np.random.default_rng(6)  # its own stream: the draws of ``rng`` stay as they were without it
    for i in range(20):
        s = _seq(brng, int(brng.integers(30, 64)))
        bind_rows.append(
            [
                f"b{i}",
                s,
                "".join(brng.choice(list("00000145"), len(s))),
                "train" if i < 12 else "test",
                "false",
            ]
        )
    _write_tsv(binding, ["id", "sequence", "binding", "set", "validation"], bind_rows)

    cache = tmp_path / "cache"
    sets = load_protein_sets(data)
    order = teacher_order(sets)
    seqs = [getattr(sets[s], split)[i] for s, split, i in order][:prefix]  # a prefix, as a stopped job leaves
    ch = load_chains(data, 14, 0)
    bind = load_binding_chains(binding)
    dims = {"unirep1900": 12, "near": 5}
    for t in TEACHERS:
        for kind, items, per_res in (
            ("proteins", seqs, False),
            ("residues", ch.train + ch.test + bind.train + bind.test, True),
        ):
            unique = list(dict.fromkeys(items))
            with EmbeddingStore(cache / kind / f"{t}.h5") as store:
                store.init({"name": t}, dims[t], dims[t] if per_res else None)
                res = (
                    [rng.normal(size=(len(s), dims[t])).astype(np.float32) for s in unique]
                    if per_res
                    else None
                )
                store.append(
                    [sequence_key(s) for s in unique],
                    rng.normal(size=(len(unique), dims[t])).astype(np.float32),
                    res,
                    [len(s) for s in unique],
                )
        unique = list(dict.fromkeys(bind.train + bind.test))  # the binding chains, from their own stream
        with EmbeddingStore(cache / "residues" / f"{t}.h5") as store:
            store.append(
                [sequence_key(s) for s in unique],
                brng.normal(size=(len(unique), dims[t])).astype(np.float32),
                [brng.normal(size=(len(s), dims[t])).astype(np.float32) for s in unique],
                [len(s) for s in unique],
            )
    return data, binding, cache


def test_fidelity_run_end_to_end_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Teacher caches for part of the rows, the tiny model as the student: the report has the student
    rows, the retention subset's counts and the per-residue table with every feature set."""
    import json

    from protembed_bench.fidelity import run
    from protembed_bench.fidelity.teacher_vectors import TEACHERS

    data, binding, cache = _fidelity_fixture(tmp_path, 700)
    from protembed_bench.fidelity import student_vectors

    assert (
        student_vectors.main(
            [
                "--model",
                str(tiny_model_dir),
                "--variant",
                "int8",
                "--data-dir",
                str(data),
                "--cache-dir",
                str(cache / "student"),
                "--train-chains",
                "14",
                "--binding-file",
                str(binding),
            ]
        )
        == 0
    )
    out = tmp_path / "report" / "fidelity"
    assert (
        run.main(
            [
                "--model",
                f"student={tiny_model_dir}:int8",
                "--data-dir",
                str(data),
                "--cache-dir",
                str(cache),
                "--train-chains",
                "14",
                "--binding-file",
                str(binding),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["full"]) == {"deeploc", "deeploc_membrane", "deepsol", "capsid"}
    assert report["full"]["deepsol"]["rows"] == {"train": 150, "train_all": 150, "test": 120, "test_all": 120}
    sub = report["subset"]["deepsol"]
    assert 50 <= sub["rows"]["train"] < 150 and 50 <= sub["rows"]["test"] < 120  # the teachers' prefix only
    assert sub["retention"]["student"]["accuracy"]["vs"] in ("teacher:unirep1900", "teacher:near")
    assert set(report["residue_tasks"]) == {"secondary_structure", "binding"}
    for table in report["residue_tasks"].values():
        assert set(table["results"]) == {
            "student:residues",
            "teacher:unirep1900",
            "teacher:near",
            "teachers:both",
            "window_onehot",
            "student:residues+window",
        }
    assert report["residue_tasks"]["binding"]["chains"] == {"train": 12, "test": 8}
    md = out.with_suffix(".md").read_text()
    assert "| deepsol | student | accuracy |" in md and "window_onehot" in md
    assert (
        "## Per residue: ligand binding (MCC, binding vs not; class-balanced probe)" in md
        and "| features | dim | MCC |" in md
    )
    # a later retention-only run keeps the tables it did not recompute, with their dates
    args = ["--model", f"student={tiny_model_dir}:int8", "--data-dir", str(data), "--cache-dir", str(cache)]
    assert run.main([*args, "--skip-full", "--skip-residues", "--out", str(out)]) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert set(again["subset"]) == set(report["subset"])
    assert again["full"]["deepsol"]["results"] == report["full"]["deepsol"]["results"]  # kept, not rerun
    assert again["full"]["deepsol"]["date"] == report["date"]
    assert again["residue_tasks"] == report["residue_tasks"]
    assert again["residue_tasks"]["binding"]["date"] == report["date"]
    # a machine without the teachers' protein vectors keeps the retention tables it cannot recompute
    for t in TEACHERS:
        (cache / "proteins" / f"{t}.h5").unlink()
    assert run.main([*args, "--skip-full", "--skip-retention", "--skip-residues", "--out", str(out)]) == 0
    kept = json.loads(out.with_suffix(".json").read_text())
    assert {t: r["results"] for t, r in kept["subset"].items()} == {
        t: r["results"] for t, r in again["subset"].items()
    }
    assert {r["date"] for r in kept["subset"].values()} == {again["date"]}
    assert f"Measured {again['date']} on student = " in out.with_suffix(".md").read_text()
    # one per-residue task again: the other keeps its table and date
    only = ["--skip-full", "--skip-retention", "--residue-tasks", "binding", "--binding-file", str(binding)]
    assert run.main([*args, *only, "--out", str(out)]) == 0
    part = json.loads(out.with_suffix(".json").read_text())
    assert part["residue_tasks"]["secondary_structure"] == report["residue_tasks"]["secondary_structure"]
    assert part["residue_tasks"]["binding"]["date"] == part["date"] != report["date"]
    # a second model (the ship check's candidate): its per-residue output against the first's, paired
    two = ["--model", f"student={tiny_model_dir}:int8", "--model", f"fp32={tiny_model_dir}:fp32"]
    assert run.main([*two, *args[2:], *only, "--train-chains", "14", "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "Each further model against the first, paired over chains: fp32:residues / student:residues" in md


def test_checkpoint_states_match_one_sequence_at_a_time(tmp_path: Path) -> None:
    """Batched residue states of a checkpoint equal each sequence run alone (padding never leaks)."""
    import torch

    from protembed import tokenizer
    from protembed_bench.fidelity.checkpoint_q3 import checkpoint_states
    from protembed_distill.config import StudentConfig
    from protembed_distill.student.model import Student
    from protembed_distill.train.checkpoint import CHECKPOINT_FORMAT

    torch.manual_seed(0)
    scfg = StudentConfig(layers=1, d_model=8, heads=2, ffn=16, dropout=0.0, max_length=128)
    model = Student(scfg, {"a": 4}, {}).eval()
    path = tmp_path / "ck.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "student_config": scfg.model_dump(mode="json"),
            "teacher_dims": {"a": 4},
            "residue_dims": {},
            "model": model.state_dict(),
        },
        path,
    )
    rng = np.random.default_rng(5)
    seqs = [_seq(rng, n) for n in (5, 40, 17, 90)]
    states = checkpoint_states(path, seqs, batch_tokens=100)  # several batches of mixed lengths
    for s, got in zip(seqs, states, strict=True):
        ids = torch.from_numpy(tokenizer.encode(s))[None, :]
        with torch.no_grad():
            alone = model.encode(ids, torch.ones_like(ids))[0].numpy()
        assert got.shape == (len(s), 8)
        np.testing.assert_allclose(got, alone, atol=1e-5)


def test_retention_reuses_the_teachers_kept_predictions_on_the_same_rows(tmp_path: Path) -> None:
    """A retention run on every row keeps the teachers' test predictions; a run on a machine without the
    teachers' vectors scores the student against them with the same numbers, and only while the rows,
    labels and probe settings are the ones they were measured on."""
    import json

    from protembed_bench.fidelity import run
    from protembed_bench.fidelity.teacher_vectors import TEACHERS
    from tiny_model import build_tiny_model

    data, _, cache = _fidelity_fixture(tmp_path, 10_000)  # every row
    # heads named and sized as the fixture's teachers, so the heads' cosines to them are measured
    tiny_model_dir = build_tiny_model(
        tmp_path / "heads",
        teachers={"unirep1900": 12, "near": 5},
        max_length=64,  # the session fixture's window
        extra_variant="int8",
    )
    out = tmp_path / "report" / "fidelity"
    args = [
        *("--model", f"student={tiny_model_dir}:int8", "--data-dir", str(data), "--cache-dir", str(cache)),
        *("--skip-full", "--skip-residues", "--out", str(out)),
    ]
    assert run.main(args) == 0
    first = json.loads(out.with_suffix(".json").read_text())
    sub = first["subset"]["deepsol"]
    assert sub["rows"] == {"train": 150, "train_all": 150, "test": 120, "test_all": 120}
    assert {t: len(p) for t, p in sub["predictions"].items()} == {f"teacher:{t}": 120 for t in TEACHERS}
    assert {n: c["rows"] for n, c in sub["cosine"].items()} == {f"student:head:{t}": 270 for t in TEACHERS}

    for t in TEACHERS:
        (cache / "proteins" / f"{t}.h5").unlink()
    assert run.main(args) == 0
    second = json.loads(out.with_suffix(".json").read_text())
    assert set(second["subset"]) == set(first["subset"])
    for task, r in second["subset"].items():
        was = first["subset"][task]
        assert r["rows"] == was["rows"] and r["rows_digest"] == was["rows_digest"]
        assert r["retention"] == was["retention"]
        assert r["predictions"] == was["predictions"] and r["cosine"] == was["cosine"]
        for t in TEACHERS:
            got, ref = r["results"][f"teacher:{t}"], was["results"][f"teacher:{t}"]
            assert got == {**ref, "kept": True}  # scores, C and width as measured
        assert r["teachers_date"] == first["date"]
    assert "their test predictions kept and reused" in out.with_suffix(".md").read_text()
    assert "| deepsol | 0 |" in out.with_suffix(".md").read_text()  # recall by class, kept teachers too
    # one set again: the others keep their tables, dated
    assert run.main([*args, "--sets", "capsid"]) == 0
    some = json.loads(out.with_suffix(".json").read_text())["subset"]
    assert (
        some["deepsol"]["date"] == second["date"]
        and some["deepsol"]["results"] == second["subset"]["deepsol"]["results"]
    )
    assert (
        "date" not in some["capsid"]
        and some["capsid"]["retention"] == second["subset"]["capsid"]["retention"]
    )
    with pytest.raises(SystemExit):
        run.main([*args, "--sets", "nosuchset"])
    # a second model is scored against the first as well (the same file here: a ratio of exactly 1)
    assert run.main([*args, "--model", f"again={tiny_model_dir}:int8"]) == 0
    pair = json.loads(out.with_suffix(".json").read_text())["subset"]["capsid"]["vs_reference"]
    assert pair["reference"] == "student"
    assert pair["ratios"]["again"]["accuracy"]["point"] == 1.0  # (mcc only where the first's is > 0)
    assert (
        "| capsid | again | student | accuracy | 1.000 [1.000, 1.000] |" in out.with_suffix(".md").read_text()
    )

    # one label changed: other rows, another digest; that set gets no retention, the others keep theirs
    test_tsv = data / "eval" / "deepsol" / "test.tsv"
    lines = test_tsv.read_text().splitlines()
    head = lines[1].split("\t")
    lines[1] = "\t".join([*head[:-1], "1" if head[-1] == "0" else "0"])
    test_tsv.write_text("\n".join(lines) + "\n")
    assert run.main(args) == 0
    third = json.loads(out.with_suffix(".json").read_text())
    assert "deepsol" not in third["subset"] and "capsid" in third["subset"]
