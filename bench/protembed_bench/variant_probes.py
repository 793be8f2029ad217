"""Linear-probe scores of model files side by side (e.g. an old int8 against a new one and fp32), with
the evaluation's own tasks, subsets, probes and bootstrap::

    python -m protembed_bench.variant_probes old=/tmp/old_bundle:int8 \\
        new=models/protembed-student-v1:int8 fp32=models/protembed-student-v1:fp32 --max-train 300

Each ``label=FOLDER:VARIANT`` is embedded once (student output and every teacher head); every task is
scored on the same seeded train/test subsets and the same bootstrap resamples, so differences between
files are paired.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from protembed.artifact import read_model_card
    from protembed_bench.evaluate import (
        DEFAULT_DATA_DIR,
        TASKS,
        EvalConfig,
        load_tasks,
        probe_task,
        student_features,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("files", nargs="+", help="label=FOLDER:VARIANT")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--max-train", type=int, default=300)
    parser.add_argument("--max-test", type=int, default=300)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    specs = []
    for text in args.files:
        label, _, rest = text.partition("=")
        folder, _, variant = rest.rpartition(":")
        if not label or not folder or not variant:
            parser.error(f"{text!r}: expected label=FOLDER:VARIANT")
        specs.append((label, Path(folder), variant))
    first = specs[0][1]
    crop = read_model_card(first).max_length
    cfg = EvalConfig(
        model_dir=first,
        teachers=[],
        data_dir=args.data_dir,
        tasks=args.tasks.split(","),
        max_train=args.max_train,
        max_test=args.max_test,
        seed=args.seed,
        resamples=args.resamples,
        threads=args.threads,
        secondary_structure=False,
    )
    tasks = load_tasks(cfg.data_dir, cfg.tasks, cfg.max_train, cfg.max_test, crop, cfg.seed)
    unique = sorted({s for t in tasks.values() for split in (t.train, t.test) for s in split.sequences})
    row_of = {s: i for i, s in enumerate(unique)}
    features = []
    seconds = {}
    for label, folder, variant in specs:
        start = time.perf_counter()
        sets = student_features(folder, variant, unique, cfg.threads, cfg.batch_tokens)
        seconds[label] = time.perf_counter() - start
        for fs in sets:  # "head:near:int8" -> "new:head:near": labels name the file, not the variant
            features.append(replace(fs, name=f"{label}:{fs.name.removesuffix(':' + variant)}"))
        print(f"{label}: embedded {len(unique)} sequences in {seconds[label]:.0f}s", file=sys.stderr)
    scores: dict[str, Any] = {}
    for name, data in tasks.items():
        outcome = probe_task(data, features, row_of, cfg)
        metric = data.spec.metrics[0]
        scores[name] = {
            "metric": metric,
            "train": len(data.train.sequences),
            "test": len(data.test.sequences),
            "scores": {fs: r.metrics[metric].to_dict() for fs, r in outcome.results.items()},
        }
    report = {
        "command": "python -m protembed_bench.variant_probes " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "files": {label: f"{folder}:{variant}" for label, folder, variant in specs},
        "unique_sequences": len(unique),
        "embed_seconds": seconds,
        "tasks": scores,
    }
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
