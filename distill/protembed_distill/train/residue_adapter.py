"""Train the student's per-residue head (``ResidueAdapter``) on a frozen trunk, and ship it in a model folder.

The trunk (everything the per-protein outputs come from) is the model folder's own and stays frozen, so
``student`` and the teacher heads give bit-identical vectors before and after; only the ``residues``
output changes. The adapter learns to predict both teachers' residue states (NEAR's and UniRep-1900's
hidden states) from the trunk's final states and the sequence, through two training-only linear heads
that are not exported: its features are the new ``residues`` output.

Stages, each resumable (a kill loses at most one batch of teacher targets or one epoch of training)::

    python -m protembed_distill.train.residue_adapter --stage select   # held-out training sequences
    python -m protembed_distill.train.residue_adapter --stage targets  # teachers' residue states (slow)
    python -m protembed_distill.train.residue_adapter --stage train    # the adapter, checkpoint per epoch
    python -m protembed_distill.train.residue_adapter --stage export --version 1.3.0   # into --model
    python -m protembed_distill.train.residue_adapter --stage all ...  # the four in turn

Training sequences are a seeded sample of the corpus, cropped to the model's context, without an
MMseqs2 hit (identity and coverage from the model card) in any evaluation set, the secondary-structure
chains and the ligand-binding test chains: both per-residue probes score the adapter on chains it never
saw, nor homologs of them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protembed import tokenizer
from protembed.artifact import CARD_FILE, read_model_card, write_model_card
from protembed.packing import Budget, pack
from protembed_distill.config import EvalSetConfig, ResidueAdapterConfig
from protembed_distill.data.dataset import Item, read_eval_sequences, sequence_key
from protembed_distill.student.model import ResidueAdapter, Student

__all__ = ["AdapterTrainer", "export_into", "main", "trunk_fingerprint", "trunk_of"]

TEACHERS = ("near", "unirep1900")
# The per-residue evaluation's second label set (protembed_bench.fidelity): its test chains are held out.
BINDING_TSV = (
    Path(__file__).parents[3] / "bench" / "protembed_bench" / "fidelity" / "data" / "flip_bind.tsv.gz"
)


def log(rec: dict[str, Any]) -> None:
    print(json.dumps({"t": dt.datetime.now(dt.UTC).strftime("%H:%M:%S"), **rec}), flush=True)


def _items(seqs: Sequence[str]) -> list[Item]:
    return [Item(f"adapter|{sequence_key(s)[:16]}", "adapter", s, sequence_key(s)) for s in seqs]


def fill_targets(run: Path, seqs: Sequence[str], batch_tokens: int | None, threads: int) -> None:
    """Both teachers' residue states of ``seqs`` into ``run/targets/<teacher>.h5`` (resumes), in calls of
    up to ``batch_tokens`` padded residues (None: each teacher's own, ``Teacher.call_tokens``)."""
    from protembed_distill.teacher_cache import EmbeddingStore, embed_into
    from protembed_distill.teachers.registry import load_teacher

    torch.set_num_threads(threads)
    (run / "targets").mkdir(parents=True, exist_ok=True)
    for name in TEACHERS:
        teacher = load_teacher(name)
        with EmbeddingStore(run / "targets" / f"{name}.h5") as store:
            stats = embed_into(
                teacher, _items(seqs), store, per_residue=True, batch_tokens=batch_tokens, progress=True
            )
        log({"stage": "targets", "teacher": name, **stats})


def read_targets(run: Path, seqs: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """teacher -> one float16 [len, dim] array per sequence, from the caches ``fill_targets`` wrote."""
    from protembed_distill.teacher_cache import EmbeddingStore

    out: dict[str, list[np.ndarray]] = {}
    keys = [sequence_key(s) for s in seqs]
    for name in TEACHERS:
        with EmbeddingStore(run / "targets" / f"{name}.h5", mode="r") as store:
            index = store.index()
            missing = sum(k not in index for k in keys)
            if missing:
                raise ValueError(
                    f"{run}/targets/{name}.h5 lacks {missing} of {len(keys)} sequences: run --stage targets"
                )
            starts, lengths = store.residue_spans(keys)
            data = store.residues()[:]  # one read: slicing the HDF5 dataset per sequence is slow
        out[name] = [
            np.asarray(data[int(s) : int(s) + int(n)], dtype=np.float16)
            for s, n in zip(starts, lengths, strict=True)
        ]
    return out


class AdapterTrainer:
    """The adapter and its two training heads on a frozen trunk; checkpoints per epoch, resumes."""

    def __init__(
        self,
        trunk: Student,
        cfg: ResidueAdapterConfig,
        teacher_dims: dict[str, int],
        run: Path,
        *,
        lr: float = 1e-3,
        epochs: int = 8,
        batch_tokens: int = 4096,
        seed: int = 0,
    ) -> None:
        torch.manual_seed(seed)
        self.trunk = trunk.eval()
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.adapter = ResidueAdapter(trunk.cfg.d_model, cfg)
        self.heads = nn.ModuleDict({n: nn.Linear(cfg.width, d) for n, d in teacher_dims.items()})
        params = [*self.adapter.parameters(), *self.heads.parameters()]
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        self.cfg, self.run, self.epochs, self.batch_tokens, self.seed = cfg, run, epochs, batch_tokens, seed
        self.lr = lr
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.init_head: dict[str, Any] | None = None  # the kept head it began from (start_from)

    @property
    def checkpoint(self) -> Path:
        return self.run / "adapter.pt"

    def save(self) -> None:
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(
            {
                "adapter": self.adapter.state_dict(),
                "heads": self.heads.state_dict(),
                "opt": self.opt.state_dict(),
                "epoch": self.epoch,
                "step": self.step,
                "history": self.history,
                "config": self.cfg.model_dump(),
                "stats": self.stats,
                "trunk": trunk_fingerprint(self.trunk),
                "init_head": self.init_head,
            },
            tmp,
        )
        tmp.replace(self.checkpoint)  # a kill mid-write leaves the previous checkpoint
        # each epoch's weights too (a few MB), for the learning curve of probe scores against residues seen
        (self.run / "epochs").mkdir(exist_ok=True)
        torch.save(
            {"adapter": self.adapter.state_dict(), "config": self.cfg.model_dump(), "epoch": self.epoch},
            self.run / "epochs" / f"{self.epoch}.pt",
        )

    def start_from(self, kept: Path) -> None:
        """Begin from a kept head (its adapter, training heads and target statistics) instead of the
        seeded initialisation, e.g. the bundled model's head when its trunk has been continued.

        Why: the head reads trunk states that a held continuation barely moves (0.7% of their variance
        for the line's link 2), yet a head retrained from scratch on them scored 0.5% lower Q3 than the
        bundled one, and so does a second seed of the recipe on the bundled trunk itself: the recipe's
        own spread, not the trunk's change (reports/distill/cpu_line.md, sessions 31-32). Continuing
        the shipped head draws no new seed, keeps users' per-residue vectors close across versions, and
        needs fewer epochs (link 2 + 1.4.0's head continued 4 epochs: Q3 1.001 [0.998, 1.003] paired)."""
        ck = torch.load(kept, weights_only=False)
        if ResidueAdapterConfig(**ck["config"]) != self.cfg:
            raise ValueError(
                f"--init-head {kept}: a head of {ck['config']}, not of the requested {self.cfg.model_dump()}"
            )
        if set(self.heads) != set(ck["stats"]):
            raise ValueError(
                f"--init-head {kept}: its teachers {sorted(ck['stats'])}, not {sorted(self.heads)}"
            )
        self.adapter.load_state_dict(ck["adapter"])
        self.heads.load_state_dict(ck["heads"])
        # the kept heads answer in the kept statistics' units, so training goes on in those
        self.stats = dict(ck["stats"])
        self.init_head = {"path": str(kept), "trunk": ck.get("trunk"), "epochs": ck.get("epoch")}

    def resume(self, init_head: Path | None = None) -> bool:
        """Continue the run's checkpoint, if any; it must have begun as asked (from ``init_head``, or
        from scratch when None), or a rerun would quietly finish another recipe's head."""
        if not self.checkpoint.is_file():
            return False
        ck = torch.load(self.checkpoint, weights_only=False)
        began = (ck.get("init_head") or {}).get("path")
        if began != (None if init_head is None else str(init_head)):
            raise ValueError(
                f"{self.checkpoint} continues {began or 'no kept head (from scratch)'}, not "
                f"{init_head or 'from scratch'}: use another --run"
            )
        self.adapter.load_state_dict(ck["adapter"])
        self.heads.load_state_dict(ck["heads"])
        self.opt.load_state_dict(ck["opt"])
        self.epoch, self.step, self.history, self.stats = ck["epoch"], ck["step"], ck["history"], ck["stats"]
        self.init_head = ck.get("init_head")
        return True

    @torch.no_grad()
    def trunk_states(self, seqs: Sequence[str]) -> list[torch.Tensor]:
        """The frozen trunk's final states of each sequence alone (float16 in memory)."""
        out = []
        for s in seqs:
            ids = torch.from_numpy(tokenizer.encode(s)).long()[None]
            out.append(self.trunk.encode(ids, torch.ones_like(ids))[0].half())
        return out

    def _batches(self, lengths: Sequence[int], rng: np.random.Generator) -> list[list[int]]:
        """Sequences of similar length up to ``batch_tokens`` padded tokens (ties in length in random
        order, so equal lengths meet differently each epoch), batches in random order."""
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
        batches = list(pack(order, Budget(tokens=self.batch_tokens), lengths.__getitem__))
        rng.shuffle(batches)
        return batches

    def _forward(
        self, seqs: Sequence[str], states: Sequence[torch.Tensor], idx: Sequence[int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        enc = tokenizer.batch_encode([seqs[i] for i in idx])
        ids = torch.from_numpy(enc.input_ids).long()
        mask = torch.from_numpy(enc.attention_mask)
        st = torch.zeros(len(idx), ids.shape[1], self.trunk.cfg.d_model)
        for r, i in enumerate(idx):
            st[r, : len(seqs[i])] = states[i].float()
        feats = self.adapter(st, ids, mask)
        return feats, {n: h(feats) for n, h in self.heads.items()}, mask.bool()

    def _targets(
        self, targets: dict[str, list[np.ndarray]], idx: Sequence[int], length: int
    ) -> dict[str, torch.Tensor]:
        out = {}
        for n, arrays in targets.items():
            mean, std = self.stats[n]
            t = torch.zeros(len(idx), length, mean.shape[0])
            for r, i in enumerate(idx):
                t[r, : len(arrays[i])] = (torch.from_numpy(arrays[i].astype(np.float32)) - mean) / std
            out[n] = t
        return out

    def fit(
        self,
        seqs: Sequence[str],
        targets: dict[str, list[np.ndarray]],
        val_seqs: Sequence[str],
        val_targets: dict[str, list[np.ndarray]],
    ) -> None:
        if not self.stats:  # standardisation of each teacher's dimensions, from the training residues
            for n, arrays in targets.items():
                # ~200 sequences (tens of thousands of residues): enough for means and spreads, and
                # 1,900-wide float32 stacks of every sequence would not fit in memory
                stack = np.concatenate(arrays[:200]).astype(np.float32)
                self.stats[n] = (torch.from_numpy(stack.mean(0)), torch.from_numpy(stack.std(0) + 1e-3))
        t0 = time.perf_counter()
        states, val_states = self.trunk_states(seqs), self.trunk_states(val_seqs)
        log({"stage": "train", "trunk_states_s": round(time.perf_counter() - t0, 1), "sequences": len(seqs)})
        if self.init_head is not None and self.step == 0:
            # the kept head's score on this trunk and these held-out sequences: the continuation's epoch 0
            log({"stage": "train", "epoch": 0, **self.validate(val_seqs, val_states, val_targets)})
        lengths = [len(s) for s in seqs]
        per_epoch = len(self._batches(lengths, np.random.default_rng(0)))
        total = per_epoch * self.epochs
        while self.epoch < self.epochs:
            rng = np.random.default_rng(self.seed + self.epoch)
            self.adapter.train()
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            for b in self._batches(lengths, rng):
                # cosine decay over the whole run, from the step count (so a resumed run continues it)
                for g in self.opt.param_groups:
                    g["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, self.step / max(1, total))))
                _, preds, mask = self._forward(seqs, states, b)
                tg = self._targets(targets, b, mask.shape[1])
                # each teacher's mean squared error over real residues, in standardized units, summed
                loss = torch.stack([((preds[n] - tg[n]) ** 2).mean(-1)[mask].mean() for n in preds]).sum()
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                self.step += 1
                seen += int(mask.sum())
                loss_sum += float(loss.detach()) * len(b)
            self.epoch += 1
            record = {
                "epoch": self.epoch,
                "step": self.step,
                "train_loss": round(loss_sum / len(seqs), 4),
                "residues_per_s": round(seen / (time.perf_counter() - t0)),
                **self.validate(val_seqs, val_states, val_targets),
            }
            self.history.append(record)
            self.save()
            log({"stage": "train", **record})

    @torch.no_grad()
    def validate(
        self, seqs: Sequence[str], states: Sequence[torch.Tensor], targets: dict[str, list[np.ndarray]]
    ) -> dict[str, Any]:
        """Per-residue cosine of each head's prediction to the teacher's state (original units, mean over
        residues), and the standardized-units loss, on held-out sequences."""
        self.adapter.eval()
        cos: dict[str, list[float]] = {n: [] for n in self.heads}
        loss = 0.0
        for start in range(0, len(seqs), 16):
            idx = list(range(start, min(len(seqs), start + 16)))
            _, preds, mask = self._forward(seqs, states, idx)
            tg = self._targets(targets, idx, mask.shape[1])
            loss += float(sum(((preds[n] - tg[n]) ** 2).mean(-1)[mask].sum() for n in preds))
            for n in preds:
                mean, std = self.stats[n]
                p, t = preds[n][mask] * std + mean, tg[n][mask] * std + mean
                cos[n] += torch.nn.functional.cosine_similarity(p, t, dim=-1).tolist()
        residues = sum(len(s) for s in seqs)
        return {
            "val_loss": round(loss / residues, 4),
            "val_residue_cosine": {n: round(float(np.mean(v)), 4) for n, v in cos.items()},
        }


def trunk_of(folder: Path) -> Student:
    """The model folder's student without its per-residue head (if it has one): what a head is trained
    on. A head trained here starts from scratch, or from a kept head's file (``--init-head``), never
    from the folder's own ONNX head, whose training heads and target statistics are not exported."""
    from protembed_distill.export.reference_vectors import student_from_folder
    from protembed_distill.student.onnx_weights import without_residue_head

    model = student_from_folder(folder)
    if model.residue_adapter is None:
        return model
    trunk = Student(model.cfg.model_copy(update={"residue_adapter": None}), model.teacher_dims)
    trunk.load_state_dict(without_residue_head(model.state_dict()))
    return trunk.eval()


def trunk_fingerprint(model: Student) -> str:
    """sha256 of the trunk's and teacher heads' weights: a head is exported only onto the trunk it was
    trained on (the trunk's states are its input)."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if not name.startswith(("residue_adapter.", "residue_heads.")):
            digest.update(name.encode())
            digest.update(value.detach().cpu().numpy().astype(np.float32).tobytes())
    return digest.hexdigest()


def export_into(
    folder: Path, checkpoint: Path, version: str, corpus: Path, eval_dirs: Sequence[Path], threads: int
) -> dict[str, Any]:
    """Put the trained adapter into ``folder`` (the model it was trained on): a new fp32 file with it,
    the card's architecture and ``residues`` width, then the int8 and fp16 files, parity, batch
    independence and reference vectors rebuilt from that fp32 file (``rebuild_variants``)."""
    from protembed_distill.export.onnx import export_onnx, parity
    from protembed_distill.export.rebuild_variants import rebuild

    ck = torch.load(checkpoint, weights_only=False)
    cfg = ResidueAdapterConfig(**ck["config"])
    trunk = trunk_of(folder)  # a head already there is replaced
    if ck.get("trunk") not in (None, trunk_fingerprint(trunk)):
        raise ValueError(f"{checkpoint} was trained on another trunk than {folder}'s; train on this model")
    model = Student(trunk.cfg.model_copy(update={"residue_adapter": cfg}), trunk.teacher_dims)
    missing, unexpected = model.load_state_dict(trunk.state_dict(), strict=False)
    if unexpected or any(not k.startswith("residue_adapter.") for k in missing):
        raise ValueError(f"trunk weights do not fit (missing {missing}, unexpected {unexpected})")
    model.residue_adapter.load_state_dict(ck["adapter"])  # type: ignore[union-attr]
    model.eval()
    card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    fp32 = folder / next(f["file"] for f in card["files"] if f["variant"] == "fp32")
    export_onnx(model, fp32)
    from protembed_distill.export.model_folder import residue_adapter_card

    card["architecture"].update(residue_adapter_card(model))
    card["architecture"]["parameters"] = model.parameter_count()
    for out in card["outputs"]:
        if out["onnx_output"] == "residue_states":
            out["dim"] = model.residue_dim
    for f in card["files"]:
        if f["variant"] == "fp32":
            f["parity_max_abs_diff"] = parity(model, fp32)
    last = ck["history"][-1] if ck["history"] else {}
    card.setdefault("metrics", {})["residue_adapter"] = {
        "epochs": ck["epoch"],
        "steps": ck["step"],
        "val_residue_cosine": last.get("val_residue_cosine"),
        "val_loss": last.get("val_loss"),
    }
    if ck.get("init_head"):  # continued from a kept head: which one, and how long it had trained
        card["metrics"]["residue_adapter"]["continued_from"] = ck["init_head"]
    write_model_card(folder, card)  # version unchanged here: rebuild() moves it with the vectors
    return rebuild(folder, corpus, eval_dirs, version, threads=threads)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m protembed_distill.train.residue_adapter",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("--stage", choices=["select", "targets", "train", "export", "all"], default="all")
    p.add_argument("--model", type=Path, default=Path("models/protembed-student-v1"))
    p.add_argument("--run", type=Path, default=Path("runs/residue-adapter"))
    p.add_argument("--corpus", type=Path, default=Path("../shared/data/corpus/corpus.fasta"))
    p.add_argument("--eval-dir", type=Path, default=Path("../shared/data/eval"))
    p.add_argument(
        "--held-out",
        type=Path,
        nargs="*",
        default=[BINDING_TSV],
        help="more TSVs (sequence and set columns; .gz too) whose test rows training must not resemble "
        "(default: the ligand-binding chains of the fidelity evaluation)",
    )
    p.add_argument("--sequences", type=int, default=2400, help="training sequences (5%% more are held out)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--kernel", type=int, default=9)
    p.add_argument(
        "--dilations",
        type=int,
        nargs="+",
        default=[1],
        help="one residual convolution per value, with that dilation (default: the 1.3.0 head's one)",
    )
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument(
        "--teacher-batch-tokens",
        type=int,
        default=None,
        help="padded residues per teacher call for --stage targets (default: each teacher's own: "
        "UniRep-1900 262,144 on a CPU in float32, its per-residue states then 2 GB; NEAR 8,192)",
    )
    p.add_argument("--version", help="the model's new version (export; part of the cache key)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init-head",
        type=Path,
        help="a kept head's file (adapter.pt; e.g. distill/heads/residue-adapter-w384.pt, the bundled "
        "model's) to continue instead of starting from scratch; --epochs and --lr are then the "
        "continuation's",
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    stages = ["select", "targets", "train", "export"] if args.stage == "all" else [args.stage]
    if "export" in stages and not args.version:
        p.error("--stage export needs --version (the vectors change, so must the version)")
    torch.set_num_threads(args.threads)
    run: Path = args.run
    run.mkdir(parents=True, exist_ok=True)
    chosen = run / "sequences.txt"
    card = read_model_card(args.model)
    eval_dirs = sorted(d for d in args.eval_dir.iterdir() if d.is_dir())
    if "select" in stages and not chosen.is_file():
        from protembed_distill.export.rebuild_variants import held_out_sequences

        specs = [EvalSetConfig(path=d) for d in eval_dirs]
        specs += [EvalSetConfig(path=f, where={"set": "test"}) for f in args.held_out]
        evals = [s for _, s in read_eval_sequences(specs)]
        data = json.loads((args.model / CARD_FILE).read_text(encoding="utf-8")).get("training_data", {})
        n = args.sequences + max(1, args.sequences // 20)
        seqs = held_out_sequences(
            args.corpus,
            evals,
            n,
            card.max_length,
            identity=float(data.get("identity_threshold", 0.5)),
            coverage=float(data.get("coverage", 0.5)),
            seed=args.seed,
            threads=args.threads,
        )
        chosen.write_text("\n".join(seqs) + "\n", encoding="ascii")
        log({"stage": "select", "sequences": len(seqs), "residues": sum(map(len, seqs)), "evals": len(evals)})
    # Export needs only the checkpoint (a kept head ships from its .pt alone), not the run's sequences.
    seqs = chosen.read_text(encoding="ascii").split() if {"targets", "train"} & set(stages) else []
    n_val = max(1, len(seqs) // 21)
    train_seqs, val_seqs = seqs[n_val:], seqs[:n_val]
    if "targets" in stages:
        fill_targets(run, seqs, batch_tokens=args.teacher_batch_tokens, threads=args.threads)
    if "train" in stages:
        trunk = trunk_of(args.model)
        targets = read_targets(run, seqs)
        dims = {n: int(v[0].shape[1]) for n, v in targets.items()}
        tr = {n: v[n_val:] for n, v in targets.items()}
        va = {n: v[:n_val] for n, v in targets.items()}
        trainer = AdapterTrainer(
            trunk,
            ResidueAdapterConfig(width=args.width, kernel=args.kernel, residual_dilations=args.dilations),
            dims,
            run,
            lr=args.lr,
            epochs=args.epochs,
            batch_tokens=args.batch_tokens,
            seed=args.seed,
        )
        if trainer.resume(args.init_head):
            log({"stage": "train", "resumed_at_epoch": trainer.epoch})
        elif args.init_head is not None:
            trainer.start_from(args.init_head)
            log({"stage": "train", "init_head": str(args.init_head)})
        trainer.fit(train_seqs, tr, val_seqs, va)
    if "export" in stages:
        card_out = export_into(
            args.model, run / "adapter.pt", args.version, args.corpus, eval_dirs, args.threads
        )
        log(
            {
                "stage": "export",
                "version": card_out["version"],
                "files": [f["file"] for f in card_out["files"]],
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
