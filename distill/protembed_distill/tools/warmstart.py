"""Keep a continuation's weights in the repository, so that the next session continues from them.

Two CPU cores train ~25-40 M residues in a session; the projection to issue 17's targets is 140-240 M more
(reports/distill/cpu_amx.md). Run folders die with the machine, so until now every session restarted at
the bundled 1.4.0 and CPU sessions could never add up. ``save`` stores a continuation's weights as the fp16
ONNX file of its export (7.6 MB; fp16 weights widen exactly, and ``optim.init_from`` reads a model folder
holding only that file) with the model card and a lineage: every continuation the weights descend from
since the bundled model, the residues each trained on and the held-out cosine each reached, so the
cumulative learning curve is read from the repository, not from machines that are gone.

    python -m protembed_distill.tools.warmstart save RUN [--model DIR] [--validated DIR] [--dest DIR]
        (exports RUN/checkpoints/best.pt to RUN/model first when the ship check has not)
    python -m protembed_distill.tools.warmstart show [--dest DIR]
    python -m protembed_distill.tools.warmstart card MODEL [--base DIR] [--dest DIR]
        (a model folder exported from these weights, e.g. to ship: its card describes the line)
    INIT=distill/warmstart AMX=1 THREADS=2 TOP=0 N=100000 ... bash scripts/cpu_continuation.sh

``RUN`` is a continuation's run folder (``checkpoints/best.pt``) or a blend's (``tools/blend_checkpoints``).
A blend's checkpoint carries its end's training history, not the blend's own score, so a blend is saved
only with ``--validated RUN_OF_END/validate/NAME``: the held-out score of exactly these weights
(``continuation_curve.py --validate NAME=...``). The saved weights are not a shipped model: shipping
stays the ship check's decision (``scripts/ship_check.sh``), and the server never reads this folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from protembed_distill.config import AnchorConfig

__all__ = ["card", "lineage_entry", "main", "save"]

DEFAULT_DEST = Path("distill/warmstart")
WEIGHTS = "model.fp16.onnx"
CARD = "model.json"
LINEAGE = "lineage.json"


def _last_epoch(log: Path) -> dict[str, Any]:
    epochs = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("kind") == "epoch"]
    if not epochs:
        raise ValueError(f"{log} has no validated epoch")
    return epochs[-1]


def lineage_entry(run: Path, model: Path, validated: Path | None) -> dict[str, Any]:
    """What one continuation contributed: where it started, what it trained, what it scored held out."""
    from protembed_distill.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    blend = ckpt.get("blend")
    if blend is not None and validated is None:
        raise ValueError(
            f"{run} holds a blend (alpha {blend['alpha']}), whose checkpoint carries its end's scores: "
            "pass --validated with the held-out score of these weights (continuation_curve.py --validate)"
        )
    card = json.loads((model / CARD).read_text())
    if validated is not None:
        val = _last_epoch(validated / "train.jsonl")["val_cosine"]
    else:
        val = card["metrics"]["val_cosine"]
    step0 = run / "step0" / "train.jsonl"
    if blend is not None:  # the blend's start is its end's step 0
        step0 = Path(blend["end"]).parent.parent / "step0" / "train.jsonl"
    commit = run / "src" / "COMMIT"
    state = ckpt["state"]
    anchor = ckpt["config"].get("anchor") or {}  # [anchor]: trained towards which model's vectors
    return {
        "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": str(run),
        "code_commit": commit.read_text().strip() if commit.is_file() else None,
        "init_from": ckpt["config"]["optim"].get("init_from"),
        "blend": blend,
        "anchor": anchor if AnchorConfig.model_validate(anchor).on else None,
        "steps": int(state["step"]),
        "train_residues": int(state["train_residues"]),
        "val_cosine_start": _last_epoch(step0)["val_cosine"] if step0.is_file() else None,
        "val_cosine": val,
        "weights_sha256": hashlib.sha256((model / WEIGHTS).read_bytes()).hexdigest(),
    }


def save(
    run: Path, model: Path, dest: Path, validated: Path | None = None, threads: int = 1
) -> dict[str, Any]:
    """Replace ``dest``'s weights with ``model``'s (exported from ``run``'s best checkpoint when missing),
    extending ``dest``'s lineage when ``run`` started from its weights."""
    if not (model / CARD).is_file() and (run / "checkpoints" / "best.pt").is_file():
        # the ship check's own export step (scripts/ship_check.sh), so a later check reuses this folder
        from protembed_distill.export.model_folder import export_checkpoint

        export_checkpoint(run / "checkpoints" / "best.pt", model, version="warmstart-trunk", threads=threads)
    if not (model / WEIGHTS).is_file():
        raise FileNotFoundError(f"{model / WEIGHTS} not found (is {run} a continuation's run folder?)")
    entry = lineage_entry(run, model, validated)
    previous = json.loads((dest / LINEAGE).read_text()) if (dest / LINEAGE).is_file() else []
    init = entry["init_from"]
    # Only a run that started from these very weights continues their line; anything else starts a new
    # one (from the bundled model, or weights from elsewhere).
    continues = bool(previous) and init is not None and Path(init).resolve() == dest.resolve()
    lineage = [*previous, entry] if continues else [entry]
    lineage[-1]["cumulative_train_residues"] = sum(e["train_residues"] for e in lineage)
    part = dest.with_name(dest.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    shutil.copyfile(model / WEIGHTS, part / WEIGHTS)
    shutil.copyfile(model / CARD, part / CARD)
    (part / LINEAGE).write_text(json.dumps(lineage, indent=1) + "\n")
    readme = dest / "README.md"
    if readme.is_file():
        shutil.copyfile(readme, part / "README.md")
    # swap in whole: a kill leaves either the old folder or the new one, never half of each
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    part.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return entry


def _same_weights(model: Path, dest: Path, threads: int) -> float:
    """The least cosine between the per-protein vectors of ``model``'s fp16 file and the warm start's:
    a folder exported from the warm start's weights (widened to fp32, a per-residue head added) gives
    the same vectors up to fp16's rounding."""
    from protembed_distill.export.onnx import onnx_outputs, parity_batches
    from protembed_distill.export.variants import variant_quality

    longest = int(json.loads((model / CARD).read_text())["input"]["max_length"])
    seqs = [s[:longest] for batch in parity_batches(1) for s in batch if len(s) > 1]
    a = {"student": onnx_outputs(model / WEIGHTS, seqs, threads)["student"]}
    b = {"student": onnx_outputs(dest / WEIGHTS, seqs, threads)["student"]}
    return float(variant_quality(a, b)["cosine_to_fp32"]["student"]["min"])


def card(model: Path, dest: Path, base: Path, threads: int = 1) -> dict[str, Any]:
    """Rewrite ``model``'s card to describe the line its weights come from.

    A model shipped from the warm start is exported through a checkpoint that only scored the kept
    weights (``continuation_curve.py --validate``, one step at learning rate 0), so its export's card
    would say one step on that run's data. What made the weights is ``base`` (the bundled model the
    line continued: its training data, and the continuations it already shipped) plus the lineage's
    later continuations; the card says that, and the held-out cosine the last one reached."""
    from protembed.artifact import write_model_card

    lineage = json.loads((dest / LINEAGE).read_text())
    base_card = json.loads((base / CARD).read_text())
    out = json.loads((model / CARD).read_text())
    if _fp32_sha(base_card) == _fp32_sha(out):
        raise ValueError(f"{base} holds {model}'s own weights: pass the model the line continued as --base")
    base_data = base_card["training_data"]
    shipped = base_data.get("continuations", [])
    if shipped:  # a model shipped from this line before: the lineage goes on from its last entry
        if [e["weights_sha256"] for e in lineage[: len(shipped)]] != [e["weights_sha256"] for e in shipped]:
            raise ValueError(f"{dest}'s lineage does not continue {base}'s ({len(shipped)} continuations)")
    else:
        start = lineage[0]["init_from"]
        if start is None or Path(start).resolve() != base.resolve():
            raise ValueError(f"{dest}'s line started from {start}, not {base}: pass that folder as --base")
    if len(lineage) == len(shipped):
        raise ValueError(f"{base} already holds every continuation of {dest}'s lineage")
    least = _same_weights(model, dest, threads)
    if least < 0.9999:
        raise ValueError(f"{model} is not {dest}'s weights: per-protein cosine {least:.5f} (< 0.9999)")
    out["training_data"] = {
        **base_data,
        "continued_from": base_data.get("continued_from")
        or {"id": base_card["id"], "version": base_card["version"]},
        "continuations": lineage,
        "cumulative_train_residues": lineage[-1]["cumulative_train_residues"],
    }
    metrics = {k: v for k, v in out.get("metrics", {}).items() if k not in ("epoch", "steps")}
    out["metrics"] = {
        **metrics,
        "val_cosine": lineage[-1]["val_cosine"],
        "val_set": "the held-out sequences of the last continuation (scripts/cpu_continuation.sh VAL_N)",
        "base_metrics": base_card.get("metrics", {}).get("base_metrics") or base_card.get("metrics", {}),
    }
    write_model_card(model, out)
    return out


def _fp32_sha(model_card: dict[str, Any]) -> str | None:
    return next((f.get("sha256") for f in model_card.get("files", []) if f.get("variant") == "fp32"), None)


def show(dest: Path) -> str:
    """The cumulative curve as a markdown table, one row per continuation in the line."""
    lineage = json.loads((dest / LINEAGE).read_text())
    names = list(lineage[0]["val_cosine"])
    out = [
        "| saved (UTC) | run | blend alpha | anchor | residues | cumulative | "
        + " | ".join(f"cos {n} start -> end" for n in names)
        + " |",
        "|" + "---|" * (6 + len(names)),
    ]
    for e in lineage:
        start = e["val_cosine_start"] or {}
        cells = " | ".join(
            f"{start[n]:.4f} -> {e['val_cosine'][n]:.4f}" if n in start else f"{e['val_cosine'][n]:.4f}"
            for n in names
        )
        alpha = e["blend"]["alpha"] if e["blend"] else "-"
        anchor = f"{e['anchor']['weight']} x {e['anchor']['model']}" if e.get("anchor") else "-"
        if (e.get("anchor") or {}).get("residue_weight"):  # per residue too (anchor.residue_weight)
            anchor += f" (+ {e['anchor']['residue_weight']} per residue)"
        residues = f"{e['train_residues']:,} | {e['cumulative_train_residues']:,}"
        out.append(f"| {e['saved_utc']} | {e['run']} | {alpha} | {anchor} | {residues} | {cells} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m protembed_distill.tools.warmstart")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="store RUN's exported weights as the next session's starting point")
    s.add_argument("run", type=Path)
    s.add_argument("--model", type=Path, help="RUN's exported model folder (default RUN/model)")
    s.add_argument("--validated", type=Path, help="held-out score of a blend (RUN_OF_END/validate/NAME)")
    s.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    s.add_argument("--threads", type=int, default=2, help="for the export, when RUN has none yet")
    sh = sub.add_parser("show", help="the line's cumulative learning curve")
    sh.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    c = sub.add_parser("card", help="describe a model folder exported from these weights by their line")
    c.add_argument("model", type=Path)
    c.add_argument(
        "--base",
        type=Path,
        default=Path("models/protembed-student-v1"),
        help="the bundled model the line continued (before the new one replaces it)",
    )
    c.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    c.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    try:
        if args.cmd == "show":
            print(show(args.dest))
            return 0
        if args.cmd == "card":
            done = card(args.model, args.dest, args.base, args.threads)
            data = done["training_data"]
            print(f"{args.model}: {data['continued_from']} + {len(data['continuations'])} continuations")
            return 0
        entry = save(args.run, args.model or args.run / "model", args.dest, args.validated, args.threads)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"warmstart: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dest}: weights of {args.run} ({entry['train_residues']:,} residues, {entry['val_cosine']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
