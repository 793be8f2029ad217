"""``protembed export CHECKPOINT -o models/<id>/``: ONNX (fp32, int8, fp16) + model.json from a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a distillation checkpoint to an ONNX model folder with model.json",
        description=__doc__,
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="a checkpoint from `protembed distill` (e.g. runs/x/checkpoints/best.pt)",
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="model folder, e.g. models/protembed-student-v1/"
    )
    p.add_argument(
        "--id", dest="model_id", default=None, help="model id (default: the config's output.model_id)"
    )
    p.add_argument(
        "--version", dest="model_version", default=None, help="model version (default: from config)"
    )
    p.add_argument("--no-int8", action="store_true", help="skip the int8 variant (static activation scales)")
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 variant")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the quality checks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from protembed_distill.export.model_folder import export_checkpoint
    from protembed_distill.export.onnx import ExportError

    torch.set_num_threads(max(1, args.threads))
    try:
        card = export_checkpoint(
            args.checkpoint,
            args.output,
            model_id=args.model_id,
            version=args.model_version,
            int8=not args.no_int8,
            fp16=not args.no_fp16,
            threads=args.threads,
        )
    except (ExportError, FileNotFoundError, ValueError) as err:
        print(f"protembed export: {err}", file=sys.stderr)
        return 1
    summary = {
        f["variant"]: {
            "file": f["file"],
            "bytes": (Path(args.output) / f["file"]).stat().st_size,
            "parity_max_abs_diff": f["parity_max_abs_diff"],
        }
        for f in card["files"]
    }
    print(json.dumps({"model": card["id"], "folder": str(args.output), "files": summary}, indent=1))
    return 0
