"""A CPU continuation of an exported model as a learning curve (issue 17; scripts/cpu_continuation.sh).

Trains on the first ``--train-sequences`` of the ranked training data, but validates on the held-out
sequences of a larger prefix (``--val-sequences``), so a small, cheaply embedded training set still gets
a held-out yardstick of a few hundred sequences. The validation rule is the distillation's own (a hash
of the sequence, independent of the prefix), so these sequences were held out of the bundled model too.

Order: teacher vectors (validation first, then training; resumable cache), step 0 (the starting model
itself on the validation set: learning rate 0, one step), then training until ``--deadline`` with a
validation after every epoch (the curve's points) and exact resume from ``<run.dir>/checkpoints``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


def curve_table(run_dir: Path) -> str:
    """The learning curve as a markdown table: step 0 (the starting model) and every validated epoch,
    with the residues trained on so far (whole epochs of the training set; the last, budget-cut one
    read from its checkpoint) and the held-out cosine to each teacher."""
    import torch

    stats = json.loads((run_dir / "data_stats.json").read_text())
    per_epoch = int(stats["train_residues"])

    def epochs(log: Path) -> list[dict]:
        return [r for r in map(json.loads, log.read_text().splitlines()) if r.get("kind") == "epoch"]

    rows = [(0, 0, 0.0, epochs(run_dir / "step0" / "train.jsonl")[-1])]
    trained = epochs(run_dir / "train.jsonl")
    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["state"]
    for k, r in enumerate(trained):
        # whole epochs, except a budget-cut last one, whose count the checkpoint at that step holds
        cut = k == len(trained) - 1 and int(last["step"]) == int(r["step"])
        seen = int(last["train_residues"]) if cut else per_epoch * (k + 1)
        seen = int(r.get("train_residues", seen))  # logged since weighted epochs (data.source_weights)
        rows.append((r["step"], seen, r["elapsed_s"], r))
    names = list(rows[0][3]["val_cosine"])
    anchored = all("val_anchor_cosine" in r for *_, r in rows)  # [anchor] on: how far from it, too
    head = "| step | residues seen | wall s | " + " | ".join(f"cos {n} | std cos {n}" for n in names)
    # the per-residue term's held-out value: the share of the anchor's residue-state variance moved
    drift = all("val_anchor_residue_loss" in r for *_, r in rows)
    head += " | cos anchor | std cos anchor" if anchored else ""
    head += " | residue drift |" if drift else " |"
    out = [head, "|" + "---|" * (3 + 2 * len(names) + 2 * anchored + drift)]
    for step, seen, wall, r in rows:
        cells = " | ".join(f"{r['val_cosine'][n]:.4f} | {r['val_cosine_std'][n]:.4f}" for n in names)
        if anchored:
            cells += f" | {r['val_anchor_cosine']:.4f} | {r['val_anchor_cosine_std']:.4f}"
        if drift:
            cells += f" | {r['val_anchor_residue_loss']:.4f}"
        out.append(f"| {step} | {seen:,} | {wall:.0f} | {cells} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--table"]:  # --table RUN_DIR: print the curve of a run (finished or not)
        print(curve_table(Path(argv[1])))
        return 0
    p = argparse.ArgumentParser(prog="python distill/protembed_distill/tools/continuation_curve.py")
    p.add_argument("config", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--train-sequences", type=int, required=True)
    p.add_argument("--val-sequences", type=int, required=True)
    p.add_argument("--deadline", type=float, required=True, help="unix time the training must end by")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--validate",
        action="append",
        metavar="NAME=CHECKPOINT",
        help="instead of training, score these weights on the run's held-out set (into RUN/validate/NAME); "
        "e.g. blends of the run's start and end (tools/blend_checkpoints.py)",
    )
    args = p.parse_args(argv)
    bad = [v for v in args.validate or [] if not v.partition("=")[0] or not v.partition("=")[2]]
    if bad:
        p.error(f"--validate takes NAME=CHECKPOINT, got {bad[0]!r}")

    from protembed_distill.config import load_config
    from protembed_distill.data.dataset import Dataset, prepare_dataset
    from protembed_distill.teacher_cache import build_caches
    from protembed_distill.train.trainer import set_threads, train

    cfg = load_config(args.config, args.overrides)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"threads": args.threads})})
    set_threads(args.threads)
    run_dir = Path(cfg.run.dir)

    def say(msg: str) -> None:
        print(f"[continuation {time.strftime('%H:%M:%S', time.gmtime())}] {msg}", file=sys.stderr, flush=True)

    def subset(n: int) -> Dataset:
        c = cfg.data.model_copy(update={"max_sequences": n})
        return prepare_dataset(
            c, run_dir, threads=args.threads, shared_cache=cfg.teacher_cache_dir().parent / "dedupe"
        )

    small, big = subset(args.train_sequences), subset(args.val_sequences)
    stats = {
        **small.stats,
        "val_sequences": len(big.val),
        "val_residues": sum(len(i.sequence) for i in big.val),
        "val_from_prefix": args.val_sequences,
    }
    ds = Dataset(small.train, big.val, stats, [*big.val, *small.train])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data_stats.json").write_text(json.dumps(stats, indent=1))
    say(f"{len(ds.train)} train ({stats['train_residues']} residues) / {len(ds.val)} val sequences")
    t0 = time.time()
    report = build_caches(cfg, ds.ranked, progress=False, log=say)
    say(f"teacher vectors in {time.time() - t0:.0f} s: {json.dumps(report)}")
    (run_dir / "embed_report.json").write_text(json.dumps({"seconds": time.time() - t0, **report}, indent=1))

    def validate(out: Path, init_from: Path | None) -> None:
        """The held-out scores of given weights: one step at learning rate 0 from them, validated."""
        if (out / "checkpoints" / "last.pt").is_file():
            return
        update = {"lr": 0.0, "max_steps": 1, "warmup_steps": 0, "time_budget_s": 0}
        optim = cfg.optim.model_copy(update={**update, **({"init_from": init_from} if init_from else {})})
        train(cfg.model_copy(update={"optim": optim}), ds, run_dir=out, resume=False, echo=False)
        say(f"{out} validated: " + (out / "train.csv").read_text().splitlines()[-1])

    validate(run_dir / "step0", None)
    if args.validate:
        for spec in args.validate:
            name, _, path = spec.partition("=")
            validate(run_dir / "validate" / name, Path(path))
        return 0
    budget = args.deadline - time.time()
    if budget < 60:
        say(f"no time left to train ({budget:.0f} s)")
        return 0
    # A resumed run keeps its trained seconds; the budget is what is left until the deadline, so its
    # learning rate decays faster and still ends annealed by then.
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"time_budget_s": budget})})
    say(f"training for at most {budget:.0f} s")
    result = train(cfg, ds, run_dir=run_dir, echo=False)
    say(f"done: {result.step} steps, last validation {json.dumps(result.val.get('val_cosine', {}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
