"""Probe scores of the per-residue head along its training: secondary-structure Q3 of the features of
each saved epoch (``runs/<run>/epochs/<n>.pt``) on the frozen trunk of the model it was trained on,
beside the trunk's own final states and the one-hot window, on the held-out test chains.

Each chain runs whole in one pass, so chains are cut at the model's context (512 residues; the served
evaluation in ``fidelity.run`` goes through the server's windows instead)::

    python -m protembed_bench.tools.adapter_q3_curve --model models/protembed-student-v1 \\
        --run runs/residue-adapter --epochs 1 4 8 --out reports/distill/residue_adapter_q3.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protembed_bench.fidelity.residues import q3_table, window_onehot
from protembed_bench.fidelity.sets import load_chains

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from protembed import tokenizer
    from protembed_distill.config import ResidueAdapterConfig
    from protembed_distill.student.model import ResidueAdapter
    from protembed_distill.train.residue_adapter import trunk_of

    p = argparse.ArgumentParser(prog="python -m protembed_bench.tools.adapter_q3_curve")
    p.add_argument(
        "--model", type=Path, required=True, help="the model folder whose trunk the head was trained on"
    )
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--epochs", type=int, nargs="+", required=True)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--train-chains", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    trunk = trunk_of(args.model)  # a head the folder has already is left out
    bound = trunk.cfg.max_length
    chains = load_chains(args.data_dir, args.train_chains, 0, bound=bound)
    with torch.no_grad():
        states = {
            split: [
                trunk.encode(torch.from_numpy(tokenizer.encode(s)).long()[None], torch.ones(1, len(s)))[0]
                for s in getattr(chains, split)
            ]
            for split in ("train", "test")
        }
    feats: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
        "trunk final states": ([x.numpy() for x in states["train"]], [x.numpy() for x in states["test"]]),
        "window_onehot": ([window_onehot(s) for s in chains.train], [window_onehot(s) for s in chains.test]),
    }
    for epoch in args.epochs:
        ck = torch.load(args.run / "epochs" / f"{epoch}.pt", weights_only=False)
        adapter = ResidueAdapter(trunk.cfg.d_model, ResidueAdapterConfig(**ck["config"])).eval()
        adapter.load_state_dict(ck["adapter"])
        with torch.no_grad():
            feats[f"head, epoch {epoch}"] = tuple(  # type: ignore[assignment]
                [
                    adapter(
                        x[None], torch.from_numpy(tokenizer.encode(s)).long()[None], torch.ones(1, len(s))
                    )[0].numpy()
                    for x, s in zip(states[split], getattr(chains, split), strict=True)
                ]
                for split in ("train", "test")
            )
    table = q3_table(feats, chains.train_y, chains.test_y, log=lambda m: print(m, flush=True))
    history = torch.load(args.run / "adapter.pt", weights_only=False)["history"]
    per_epoch = {int(h["epoch"]): h for h in history}
    table["epochs"] = {e: per_epoch.get(e) for e in args.epochs}
    table["bound"] = bound
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
