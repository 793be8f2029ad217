"""Blend a continuation's best checkpoint with its starting weights (``train.checkpoint.blend_checkpoints``).

    python -m protembed_distill.tools.blend_checkpoints runs/cpu-wise --alpha 0.5 --out runs/cpu-wise-a50

reads ``RUN/step0/checkpoints/last.pt`` (the starting model, written by continuation_curve.py) and
``RUN/checkpoints/best.pt`` and writes ``OUT/checkpoints/best.pt``, the layout ``scripts/ship_check.sh``
and the model-folder export read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m protembed_distill.tools.blend_checkpoints")
    p.add_argument("run", type=Path, help="a continuation's run folder (step0/ and checkpoints/best.pt)")
    p.add_argument("--alpha", type=float, required=True, help="weight of the trained end: 0 start, 1 end")
    p.add_argument("--out", type=Path, required=True, help="run folder to write checkpoints/best.pt into")
    p.add_argument("--start", type=Path, help="starting checkpoint (default RUN/step0/checkpoints/last.pt)")
    args = p.parse_args(argv)

    from protembed_distill.train.checkpoint import atomic_save, blend_checkpoints

    start = args.start or args.run / "step0" / "checkpoints" / "last.pt"
    try:
        ckpt = blend_checkpoints(start, args.run / "checkpoints" / "best.pt", args.alpha)
    except (FileNotFoundError, ValueError) as exc:
        print(f"blend_checkpoints: {exc}", file=sys.stderr)
        return 2
    dest = args.out / "checkpoints" / "best.pt"
    atomic_save(ckpt, dest)
    print(f"{dest}: alpha {args.alpha} of {args.run} over {start}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
