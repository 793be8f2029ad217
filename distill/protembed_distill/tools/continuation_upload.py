"""A model folder small enough to carry to a GPU box for ``FROM_MODEL`` (a trunk continuation): the card
and the int8 file cut to the per-protein outputs, without the per-residue head.

Why: the device machine takes 64 MiB a call, the tree and the teachers' and data archives included, which
leaves about 6.5 MB for the model. A continuation reads only the trunk's and the teacher heads' weights
(the per-residue head is trained afterwards on the new trunk, so it does not carry over), and since the
head (1.3.0) the whole int8 file no longer fits: 8.6 MB with the width-256 head, 12.6 MB with 1.4.0's.
Cut with the server's own ``per_protein_graph`` (the graph per-protein requests run), it is the trunk's
size again. The card is copied as it is: its checksums are for the shipped files, which this folder only
seeds weights from and never serves.

    python distill/protembed_distill/tools/continuation_upload.py models/protembed-student-v1 .gpu/from-model
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from protembed.artifact import CARD_FILE, read_model_card
from protembed.runtime import per_protein_graph

__all__ = ["continuation_folder"]


def continuation_folder(model: Path, out: Path) -> Path:
    """Write ``out`` (model.json and the cut int8 file); returns the weight file's path."""
    card = read_model_card(model)
    int8 = card.file("int8")
    if int8 is None or not (model / int8.file).is_file():
        raise FileNotFoundError(
            f"{model}: no int8 file to cut (the card lists {[f.file for f in card.files]})"
        )
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.onnx"):  # a folder reused from an older model must not seed from its file
        stale.unlink()
    shutil.copyfile(model / CARD_FILE, out / CARD_FILE)
    names = [o.onnx_output for o in card.per_protein_outputs()]
    target = out / int8.file
    target.write_bytes(per_protein_graph(model / int8.file, names))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("model", type=Path, help="the shipped model folder")
    p.add_argument("out", type=Path, help="the folder to carry (FROM_MODEL=<out>)")
    args = p.parse_args(argv)
    path = continuation_folder(args.model, args.out)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB (per-protein graph of {args.model}'s int8 file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
