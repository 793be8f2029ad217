"""The cache's capacity plan, measured: what one cached sequence costs in Redis per output and value
encoding, the hit rate of a realistic repeat pattern at several cache sizes, and what float16 values
cost in accuracy.

* ``bytes``: a real redis-server (no persistence); the service's own cache writes entries exactly as the
  server does (``cache_key`` keys, ``encode_array`` values, SET with the TTL), and ``used_memory``
  before and after gives the bytes per entry, allocator size classes and Redis' per-key overhead
  included. Value contents do not change their size (Redis stores bytes as given), so random vectors
  of each output's real shape stand in; per-residue values use the real lengths of corpus sequences.
  A cluster-enabled node is measured too (cluster mode keeps a slot index per key).
* ``hits``: a proteome (a seeded sample of the corpus) embedded, then embedded again with 10% of it
  replaced by new sequences, then once more: each pass sends batches of 32 through the cache the way
  the engine does (one ``get_many``, then ``put_many`` of the misses) against a real redis-server with
  ``maxmemory`` at a fraction of the proteome's float32 footprint and ``allkeys-lru``.
* ``encoding``: the bundled model embeds held-out sets of the probe tasks; every output's vectors go
  through the float16 encoding and back; max absolute and relative error, the lowest cosine, and linear
  probe scores (the evaluation's own probe code, paired bootstrap) on float32 vs float16 vectors.

Run from the repository root::

    python -m protembed_bench.cache_plan --out reports/cache_capacity
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from protembed.cache import RedisCache, cache_key, decode_array, encode_array, make_cache
from protembed.fasta import read_fasta
from protembed.settings import default_model_dir
from protembed.testing import RedisServer, free_port
from protembed_distill.reports import cpu_model

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "data" / "corpus" / "corpus.fasta"
SCALES = (1_000_000, 60_000_000, 400_000_000)  # a large lab / UniRef50 / UniRef100
ENCODINGS = ("float32", "float16")
BATCH = 32


# --- a redis-server for the measurement ---------------------------------------------------------------


@contextmanager
def redis_server(*extra: str) -> Iterator[Any]:
    """A fresh redis-server on a free port (no persistence); yields a sync client."""
    import redis

    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir), extra=extra)
        server.start()
        try:
            client = redis.Redis(port=server.port, socket_timeout=30)
            client.url = server.url  # type: ignore[attr-defined]
            yield client
        finally:
            server.kill()


def _used(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def corpus_sequences(path: Path, seed: int) -> list[str]:
    """The corpus's sequences in a seeded random order (the corpus holds each sequence once)."""
    seqs = [r.sequence.upper() for r in read_fasta(path)]
    random.Random(seed).shuffle(seqs)
    return seqs


# --- bytes per cached sequence ----------------------------------------------------------------------------


async def _fill(url: str, items: list[tuple[str, bytes]], encoding: str) -> None:
    cache = make_cache(url, max_bytes=0, ttl_s=7 * 86400, timeout_s=5.0, encoding=encoding)  # type: ignore[arg-type]
    assert isinstance(cache, RedisCache)
    try:
        for i in range(0, len(items), 256):
            cache.put_many(items[i : i + 256])
            await cache.flush_writes()
        if cache.errors:
            raise RuntimeError(f"{cache.errors} redis errors while writing")
    finally:
        await cache.close()


def _entries(card: Any, spec: Any, seqs: Sequence[str], rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """(key, float32 value) per sequence, as the engine hands them to the cache."""
    shared = rng.normal(0, 1, spec.dim).astype(np.float32)  # per-protein values all have one size
    items = []
    for seq in seqs:
        vec = (
            rng.normal(0, 1, (len(seq), spec.dim)).astype(np.float32)
            if spec.level == "per_residue"
            else shared
        )
        items.append((cache_key(card.id, card.version, f"{spec.name}@int8", seq), encode_array(vec)))
    return items


def measure_bytes(card: Any, seqs: list[str], n_protein: int, n_residue: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    # The cluster bus port is given: by default it is the port + 10000, which a free port may not allow.
    cluster = ("--cluster-enabled", "yes", "--cluster-port", str(free_port()))
    for mode, extra in (("single", ()), ("cluster node", cluster)):
        with redis_server(*extra) as client:
            url = client.url
            if extra:
                client.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)  # one node serving every slot
                for _ in range(200):
                    if client.cluster("info")["cluster_state"] == "ok":
                        break
                    time.sleep(0.05)
                url = url.replace("redis://", "redis+cluster://").removesuffix("/0")
            for spec in card.outputs:
                chosen = seqs[: n_residue if spec.level == "per_residue" else n_protein]
                items = _entries(card, spec, chosen, rng)
                residues = sum(map(len, chosen))
                for encoding in ENCODINGS:
                    client.flushall()
                    before = _used(client)
                    asyncio.run(_fill(url, items, encoding))
                    if int(client.dbsize()) != len(items):
                        raise RuntimeError(f"{client.dbsize()} keys stored of {len(items)}")
                    pipe = client.pipeline(transaction=False)
                    for key in client.scan_iter(count=1000):
                        pipe.strlen(key)
                    stored = sum(pipe.execute())  # the value bytes as stored, in this encoding
                    per_entry = (_used(client) - before) / len(items)
                    rows.append(
                        {
                            "redis": mode,
                            "output": spec.name,
                            "level": spec.level,
                            "dim": spec.dim,
                            "encoding": encoding,
                            "entries": len(items),
                            "mean_length": round(residues / len(items), 1),
                            "value_bytes": round(stored / len(items), 1),
                            "bytes_per_entry": round(per_entry, 1),
                            "bytes_per_residue": (
                                round(per_entry * len(items) / residues, 2)
                                if spec.level == "per_residue"
                                else None
                            ),
                        }
                    )
                    print(f"bytes: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


# --- hit rate of a repeat pattern ---------------------------------------------------------------------------


def repeat_pattern(
    seqs: list[str], proteome: int, new_fraction: float, passes: int, seed: int
) -> list[list[str]]:
    """Pass 1: the proteome; each later pass: the previous one with ``new_fraction`` of it replaced by
    sequences not seen before (a re-annotation run after a database update), in a fresh order."""
    rng = random.Random(seed)
    current = seqs[:proteome]
    fresh = iter(seqs[proteome:])
    runs = [rng.sample(current, len(current))]
    for _ in range(passes - 1):
        keep = rng.sample(current, len(current) - round(new_fraction * len(current)))
        current = keep + [next(fresh) for _ in range(len(current) - len(keep))]
        runs.append(rng.sample(current, len(current)))
    return runs


async def _replay(url: str, runs: list[list[str]], value: bytes, encoding: str) -> list[float]:
    """Each pass through the cache as the engine does it; the hit rate of each pass."""
    cache = RedisCache(url, ttl_s=0, timeout_s=5.0, encoding=encoding)  # type: ignore[arg-type]
    rates = []
    try:
        for run in runs:
            hits = 0
            for i in range(0, len(run), BATCH):
                keys = [cache_key("m", "1", "student@int8", s) for s in run[i : i + BATCH]]
                got = await cache.get_many(keys)
                hits += sum(v is not None for v in got)
                cache.put_many([(k, value) for k, v in zip(keys, got, strict=True) if v is None])
                await cache.flush_writes()
            rates.append(hits / len(run))
        if cache.errors:
            raise RuntimeError(f"{cache.errors} redis errors during the replay")
    finally:
        await cache.close()
    return rates


def measure_hits(
    seqs: list[str], proteome: int, new_fraction: float, passes: int, fractions: Sequence[float], dim: int
) -> dict[str, Any]:
    runs = repeat_pattern(seqs, proteome, new_fraction, passes, seed=1)
    value = encode_array(np.random.default_rng(0).normal(0, 1, dim).astype(np.float32))
    with redis_server() as client:  # the proteome's float32 footprint, measured without a bound
        base = _used(client)
        asyncio.run(_replay(client.url, runs[:1], value, "float32"))
        footprint = _used(client) - base
    rows = []
    for fraction in fractions:
        for encoding in ENCODINGS:
            with redis_server() as client:
                base = _used(client)
                limit = base + int(fraction * footprint)
                client.config_set("maxmemory", limit)
                client.config_set("maxmemory-policy", "allkeys-lru")
                rates = asyncio.run(_replay(client.url, runs, value, encoding))
                rows.append(
                    {
                        "cache_fraction_of_float32_proteome": fraction,
                        "maxmemory_bytes": limit,
                        "encoding": encoding,
                        "hit_rate_per_pass": [round(r, 4) for r in rates],
                        "entries_held_at_end": int(client.dbsize()),
                    }
                )
                print(f"hits: {rows[-1]}", file=sys.stderr, flush=True)
    return {
        "proteome": proteome,
        "new_fraction": new_fraction,
        "passes": passes,
        "batch": BATCH,
        "float32_footprint_bytes": footprint,
        "rows": rows,
    }


# --- what float16 values cost -----------------------------------------------------------------------------


def _f16(vec: np.ndarray) -> np.ndarray:
    back = decode_array(encode_array(vec, "float16"))
    assert back is not None
    return back


def measure_encoding(
    model_dir: Path,
    tasks: Sequence[str],
    max_train: int,
    max_test: int,
    probe_outputs: Sequence[str],
    threads: int,
    seed: int = 0,
    resamples: int = 1000,
) -> dict[str, Any]:
    from protembed_bench import probes
    from protembed_bench.evaluate import DEFAULT_DATA_DIR, TASKS, load_tasks
    from protembed_bench.onnx_student import OnnxStudent

    student = OnnxStudent(model_dir, "fp32", threads)
    card = student.card
    unknown = [o for o in probe_outputs if card.output(o) is None]
    if unknown:
        raise ValueError(f"--probe-outputs {unknown}: not outputs of {card.id}")
    data = load_tasks(DEFAULT_DATA_DIR, tasks, max_train, max_test, card.max_length, seed)
    unique = list(dict.fromkeys(s for t in data.values() for s in (*t.train.sequences, *t.test.sequences)))
    row_of = {s: i for i, s in enumerate(unique)}
    started = time.perf_counter()
    raw = student.embed(unique, [o.onnx_output for o in card.outputs], batch_tokens=8192)
    print(
        f"encoding: embedded {len(unique)} sequences in {time.perf_counter() - started:.0f}s", file=sys.stderr
    )

    errors = {}
    vectors: dict[str, dict[str, list[np.ndarray]]] = {"float32": {}, "float16": {}}
    for spec in card.outputs:
        rows = list(raw[spec.onnx_output])
        back = [_f16(v) for v in rows]
        vectors["float32"][spec.name], vectors["float16"][spec.name] = rows, back
        flat, flat16 = np.concatenate([v.ravel() for v in rows]), np.concatenate([v.ravel() for v in back])
        diff = np.abs(flat16 - flat)
        normal = np.abs(flat) >= np.finfo(np.float16).tiny  # below it float16 is subnormal: absolute error
        cos = [
            float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
            for a, b in zip(rows, back, strict=True)
        ]
        errors[spec.name] = {
            "values": int(flat.size),
            "max_abs_value": float(np.abs(flat).max()),
            "max_abs_error": float(diff.max()),
            "mean_abs_error": float(diff.mean()),
            "max_rel_error": float((diff[normal] / np.abs(flat[normal])).max()),
            "min_cosine": min(cos),
            "stored_as_float32_overflow": sum(
                encode_array(v, "float16")[:4] == encode_array(v)[:4] for v in rows
            ),
        }
        print(f"encoding: {spec.name} {errors[spec.name]}", file=sys.stderr, flush=True)

    probe_rows = []
    for name, task in data.items():
        task_spec = TASKS[name]
        y_train, y_test, _ = probes.encode_labels(task.train.labels, task.test.labels)
        boot_idx = probes.bootstrap_indices(len(y_test), resamples, seed)
        metric = task_spec.metrics[0]
        for output in probe_outputs:
            results = {}
            for encoding in ENCODINGS:
                rows = vectors[encoding][output]
                x = {
                    split: np.stack([rows[row_of[s]] for s in getattr(task, split).sequences])
                    for split in ("train", "test")
                }
                results[encoding] = probes.run_probe(
                    x["train"],
                    y_train,
                    x["test"],
                    y_test,
                    task_spec.kind,
                    metrics=task_spec.metrics,
                    boot_idx=boot_idx,
                    seed=seed,
                    threads=threads,
                )
            ratio = probes.paired_ratio_interval(
                y_test, results["float16"].predictions, results["float32"].predictions, metric, boot_idx
            )
            probe_rows.append(
                {
                    "task": name,
                    "output": output,
                    "metric": metric,
                    "n_train": len(y_train),
                    "n_test": len(y_test),
                    "float32": results["float32"].metrics[metric].to_dict(),
                    "float16": results["float16"].metrics[metric].to_dict(),
                    "float16_over_float32": ratio.to_dict(),
                    "predictions_changed": int(
                        (results["float16"].predictions != results["float32"].predictions).sum()
                    ),
                    "same_regularisation": results["float16"].regularisation
                    == results["float32"].regularisation,
                }
            )
            print(f"encoding: probe {probe_rows[-1]}", file=sys.stderr, flush=True)
    return {
        "model": f"{card.id} {card.version} fp32 (bundled)",
        "sequences": len(unique),
        "tasks": list(tasks),
        "max_train": max_train,
        "max_test": max_test,
        "errors": errors,
        "probes": probe_rows,
    }


# --- report -------------------------------------------------------------------------------------------


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n < 1e12 else f"{n / 1e12:,.2f} TB"


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Cache capacity: measured",
        "",
        f"redis-server {report['redis_version']}, redis-py {report['redis_py']}. The machine was shared with "
        "other jobs (bytes, hit rates and errors do not depend on speed). Commands, from the repository "
        "root:",
        "",
        *(f"- {part}: `{r['command']}` ({r['date']}, {r['cpu']})" for part, r in report["runs"].items()),
        "",
        "How each number is measured: see the docstring of `bench/protembed_bench/cache_plan.py`. The plan "
        "built on these numbers is docs/cache.md.",
    ]
    if "bytes" in report:
        lines += [
            "",
            "## Bytes per cached sequence (Redis `used_memory` per entry: key, value, TTL, allocator)",
            "",
            "| Redis | output | encoding | value bytes | bytes per entry | per residue | "
            + " | ".join(f"{s:,} seqs" for s in SCALES)
            + " |",
            "|---|---|---|---|---|---|" + "---|" * len(SCALES),
        ]
        for r in report["bytes"]:
            per_residue = r["level"] == "per_residue"
            sizes = " | ".join(_gb(r["bytes_per_entry"] * s) for s in SCALES)
            lines.append(
                f"| {r['redis']} | {r['output']} ({r['dim']}{' x L' if per_residue else ''}) "
                f"| {r['encoding']} "
                f"| {r['value_bytes']:,.0f} | {r['bytes_per_entry']:,.0f} | "
                f"{r['bytes_per_residue'] if per_residue else '-'} | {sizes} |"
            )
        length = next((r["mean_length"] for r in report["bytes"] if r["level"] == "per_residue"), None)
        lines += [
            "",
            "Per-residue rows are for the measured sequences' mean length "
            f"({length} residues, corpus sample); "
            "scale them by your mean length (bytes per residue column).",
        ]
    if "hits" in report:
        h = report["hits"]
        passes = ", ".join(f"pass {i + 1}" for i in range(h["passes"]))
        lines += [
            "",
            f"## Hit rate: a {h['proteome']:,}-sequence proteome embedded {h['passes']} times, "
            f"{h['new_fraction']:.0%} new sequences each time",
            "",
            f"Student vectors (768), batches of {h['batch']}, `allkeys-lru`; "
            "the proteome's float32 footprint is "
            f"{h['float32_footprint_bytes'] / 1e6:,.1f} MB. Hit rate of {passes}:",
            "",
            "| maxmemory (of the float32 proteome) | encoding | hit rate per pass | entries held |",
            "|---|---|---|---|",
        ]
        for r in h["rows"]:
            rates = " / ".join(f"{x:.1%}" for x in r["hit_rate_per_pass"])
            lines.append(
                f"| {r['cache_fraction_of_float32_proteome']:.0%} | {r['encoding']} | {rates} | "
                f"{r['entries_held_at_end']:,} |"
            )
    if "encoding" in report:
        e = report["encoding"]
        lines += [
            "",
            "## float16 values: error and probe scores "
            f"({e['model']}, {e['sequences']:,} held-out sequences)",
            "",
            "| output | values | max abs value | max abs error | mean abs error | max rel error "
            "| min cosine | "
            "kept float32 (overflow) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in e["errors"].items():
            lines.append(
                f"| {name} | {r['values']:,} | {r['max_abs_value']:.3g} | {r['max_abs_error']:.2e} | "
                f"{r['mean_abs_error']:.2e} | {r['max_rel_error']:.2e} | {r['min_cosine']:.8f} | "
                f"{r['stored_as_float32_overflow']} |"
            )
        lines += [
            "",
            f"Linear probes (train {e['max_train']}, test {e['max_test']} per task; "
            "the evaluation's probe code, "
            "95% paired bootstrap):",
            "",
            "| task | output | metric | float32 | float16 | float16 / float32 | test predictions changed |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in e["probes"]:
            a, b, q = r["float32"], r["float16"], r["float16_over_float32"]
            lines.append(
                f"| {r['task']} | {r['output']} | {r['metric']} "
                f"| {a['point']:.4f} [{a['low']:.3f}, {a['high']:.3f}] "
                f"| {b['point']:.4f} [{b['low']:.3f}, {b['high']:.3f}] | {q['point']:.4f} [{q['low']:.4f}, "
                f"{q['high']:.4f}] | {r['predictions_changed']} of {r['n_test']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m protembed_bench.cache_plan", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "reports" / "cache_capacity", help="writes OUT.json and OUT.md"
    )
    parser.add_argument(
        "--parts",
        default="bytes,hits,encoding",
        help="which measurements to (re)run; others are kept from OUT.json",
    )
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--entries", type=int, default=5000, help="per-protein entries per bytes measurement")
    parser.add_argument(
        "--residue-entries", type=int, default=400, help="per-residue entries per bytes measurement"
    )
    parser.add_argument("--proteome", type=int, default=10000)
    parser.add_argument("--new-fraction", type=float, default=0.1)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--fractions", default="0.25,0.5,0.75,1.0,1.25")
    parser.add_argument("--tasks", default="deeploc,deeploc_membrane,deepsol")
    parser.add_argument("--max-train", type=int, default=400)
    parser.add_argument("--max-test", type=int, default=300)
    parser.add_argument("--probe-outputs", default="student")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from protembed.artifact import read_model_card

    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    report: dict[str, Any] = json.loads(json_path.read_text()) if json_path.is_file() else {}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"bytes", "hits", "encoding"}
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; known: bytes, hits, encoding")
    card = read_model_card(args.model)
    if "bytes" in parts or "hits" in parts:
        seqs = corpus_sequences(args.corpus, seed=0)
    if "bytes" in parts:
        report["bytes"] = measure_bytes(card, seqs, args.entries, args.residue_entries)
    if "hits" in parts:
        fractions = [float(f) for f in args.fractions.split(",")]
        report["hits"] = measure_hits(
            seqs,
            args.proteome,
            args.new_fraction,
            args.passes,
            fractions,
            next(o.dim for o in card.outputs if o.name == card.default_output),
        )
    if "encoding" in parts:
        report["encoding"] = measure_encoding(
            args.model,
            args.tasks.split(","),
            args.max_train,
            args.max_test,
            args.probe_outputs.split(","),
            args.threads,
        )
    import redis

    with redis_server() as client:
        report["redis_version"] = client.info("server")["redis_version"]
    command = "python -m protembed_bench.cache_plan " + " ".join(argv if argv is not None else sys.argv[1:])
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for part in parts:  # parts can be rerun one at a time: each keeps the command and date that made it
        report.setdefault("runs", {})[part] = {"command": command, "date": date, "cpu": cpu_model()}
    report["redis_py"] = redis.__version__
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(render(report))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
