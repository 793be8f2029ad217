"""Does the per-protein vector lose what the teachers keep because of how it pools? A matched probe of
pooling rules over the served model's own per-residue features, chosen by cross-validation on TRAIN.

The served ``student`` vector is a mean over residues of the 768-wide pooling features. A mean forgets
where things are; the sorting signals that decide localisation sit at the ends (signal peptides and
transit peptides at the N-terminus, retention and targeting motifs at the C-terminus), which UniRep's
recurrent state, averaged, still reflects. This tool exposes two internal tensors of the served file
(the pooling features and the trunk's final states) as extra outputs, runs every row of every
per-protein set through the server's windows, and probes each pooling rule with the fidelity probe
(StandardScaler + logistic regression, C by 3-fold CV on train, paired bootstrap on test).

    python -m protembed_bench.tools.pooling_probe models/protembed-student-v1 --variant int8 \
        --data-dir ../shared/data --out reports/distill/pooling_probe.json

The rule to ship is picked by the mean TRAIN cross-validation score over the sets, never by test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from protembed.artifact import load_model, sha256_file
from protembed.windows import Window, plan_windows, pool_windows
from protembed_bench import probes
from protembed_bench.fidelity.proteins import TASK_METRICS
from protembed_bench.fidelity.sets import load_protein_sets, sequence_key
from protembed_bench.fidelity.student_vectors import served_overlap, window_batches

POOL_FEATURES = "/model/pool_proj/pool_proj.1/Mul_1_output_0"  # GELU(Linear(states)), [B, L, 768]
TRUNK_STATES = "/model/norm/LayerNormalization_output_0"  # final layer-normed states, [B, L, 192]
GRID = (1e-3, 1e-2, 1e-1, 1.0)  # the per-protein fidelity probe's grid

KEEP = 64  # rows of the 768-wide pooling features kept at each end (the whole [L, 768] would not fit)

Ends = tuple[np.ndarray, np.ndarray]  # the first and the last KEEP rows of a chain's features


def _ends(x: np.ndarray | Ends, k: int) -> np.ndarray:
    """Means of the first and the last ``k`` rows (the whole chain when shorter)."""
    first, last = (x, x) if isinstance(x, np.ndarray) else x
    return np.concatenate([first[:k].mean(0), last[-k:].mean(0)])


# name -> rule over (served student vector, the pooling features' ends, trunk states [L, 192], the
# per-residue head's features [L, width]: the served ``residues``, trained on the teachers' residue states)
RULES: dict[str, Callable[[np.ndarray, Ends, np.ndarray, np.ndarray], np.ndarray]] = {
    "mean (served)": lambda s, f, t, r: s,
    "mean + ends16(trunk)": lambda s, f, t, r: np.concatenate([s, _ends(t, 16)]),
    "mean + ends32(trunk)": lambda s, f, t, r: np.concatenate([s, _ends(t, 32)]),
    "mean + ends64(trunk)": lambda s, f, t, r: np.concatenate([s, _ends(t, 64)]),
    "mean + ends32(pool)": lambda s, f, t, r: np.concatenate([s, _ends(f, 32)]),
    "mean + max(trunk)": lambda s, f, t, r: np.concatenate([s, t.max(0)]),
    "mean + std(trunk)": lambda s, f, t, r: np.concatenate([s, t.std(0)]),
    "mean + mean(head)": lambda s, f, t, r: np.concatenate([s, r.mean(0)]),
}


class Features:
    """The served file with two internal tensors exposed, run as the server runs it."""

    def __init__(self, folder: Path, variant: str, threads: int) -> None:
        import onnx
        import onnxruntime as ort

        loaded = load_model(folder, variant)
        self.card = loaded.card
        self.sha256 = sha256_file(loaded.onnx_path)
        model = onnx.load(str(loaded.onnx_path))
        for name in (POOL_FEATURES, TRUNK_STATES):
            model.graph.output.append(onnx.ValueInfoProto(name=name))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self.student = next(o.onnx_output for o in self.card.outputs if o.name == "student")
        self.residues = next(o.onnx_output for o in self.card.outputs if o.name == "residues")
        self.overlap = served_overlap()

    def run(self, seqs: Sequence[str], batch_tokens: int = 16384) -> dict[str, np.ndarray]:
        """rule name -> [n, dim] for ``seqs``."""
        plans: list[list[Window]] = [plan_windows(len(s), self.card.max_length, self.overlap) for s in seqs]
        outs: list[tuple[np.ndarray, Ends, np.ndarray, np.ndarray]] = [None] * sum(map(len, plans))  # type: ignore[list-item]
        for batch, enc in window_batches(seqs, plans, batch_tokens):
            s, f, t, r = self.session.run(
                [self.student, POOL_FEATURES, TRUNK_STATES, self.residues],
                {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask},
            )
            for row, b in enumerate(batch):
                n = enc.lengths[row]
                # copies: a view would keep the whole batch's [B, L, 768] array alive
                outs[b] = (
                    s[row].copy(),
                    (f[row, :KEEP].copy(), f[row, max(0, n - KEEP) : n].copy()),
                    t[row, :n].astype(np.float16),
                    r[row, :n].astype(np.float16),
                )
        result: dict[str, list[np.ndarray]] = {name: [] for name in RULES}
        start = 0
        for plan in plans:
            got = outs[start : start + len(plan)]
            start += len(plan)
            s = pool_windows(plan, [g[0] for g in got], False) if len(plan) > 1 else got[0][0]
            f = (got[0][1][0], got[-1][1][1])  # the chain's first rows are its first window's; last, last
            t = pool_windows(plan, [g[2] for g in got], True) if len(plan) > 1 else got[0][2]
            r = pool_windows(plan, [g[3] for g in got], True) if len(plan) > 1 else got[0][3]
            for name, rule in RULES.items():
                result[name].append(np.asarray(rule(s, f, t, r), dtype=np.float32))
        return {name: np.stack(v) for name, v in result.items()}


def _entry(rule: str) -> str:
    """The cache file's entry for a rule: by its name, so adding or reordering rules reads no stale
    entry (hex digits, never numpy's own keyword, allow_pickle)."""
    return "r" + sequence_key(rule)[:16]


def cached_features(model: Features, seqs: Sequence[str], cache: Path) -> dict[str, np.ndarray]:
    """``model.run`` once per (file, set split): a rerun of the probes costs no model time."""
    key = sequence_key("\n".join(seqs))[:16]
    path = cache / f"{model.sha256[:12]}-{key}.npz"
    if path.is_file():
        with np.load(path) as data:
            stored = {name: data[_entry(name)] for name in RULES if _entry(name) in data.files}
        if len(stored) == len(RULES):
            return stored
    out = model.run(seqs)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{_entry(name): out[name] for name in RULES})  # type: ignore[arg-type]
    tmp.replace(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--variant", default="int8")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--sets", nargs="+", default=list(TASK_METRICS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=Path("runs/pooling_probe"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = Features(args.folder, args.variant, args.threads)
    sets = load_protein_sets(args.data_dir)
    report: dict[str, object] = {
        "command": "python -m protembed_bench.tools.pooling_probe "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {
            "folder": str(args.folder),
            "variant": args.variant,
            "version": model.card.version,
            "sha256": model.sha256,
        },
        "sets": {},
    }
    if True:
        for name in args.sets:
            ps = sets[name]
            train = cached_features(model, ps.train, args.cache)
            test = cached_features(model, ps.test, args.cache)
            print(f"{name}: features in {time.time() - t0:.0f} s", flush=True)
            metric = TASK_METRICS[name][0]
            y_train, y_test, _ = probes.encode_labels(ps.train_y, ps.test_y)
            boot = probes.bootstrap_indices(len(y_test), 1000, 0)
            rows: dict[str, object] = {}
            base_pred: np.ndarray | None = None
            for rule in RULES:
                res = probes.run_probe(
                    train[rule],
                    y_train,
                    test[rule],
                    y_test,
                    "classification",
                    metrics=(metric,),
                    boot_idx=boot,
                    folds=3,
                    seed=0,
                    grid=GRID,
                    threads=args.threads,
                )
                row = {
                    "dim": res.n_features,
                    "C": res.regularisation,
                    "cv_train": res.cv_score,
                    metric: res.metrics[metric].to_dict(),
                }
                if base_pred is None:
                    base_pred = res.predictions
                else:
                    row["vs_served"] = probes.paired_ratio_interval(
                        y_test, res.predictions, base_pred, metric, boot
                    ).to_dict()
                rows[rule] = row
                print(f"  {rule:24s} cv {res.cv_score:.3f}  test {res.metrics[metric].point:.3f}", flush=True)
            report["sets"][name] = {"metric": metric, "rules": rows}  # type: ignore[index]
    report["wall_s"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
