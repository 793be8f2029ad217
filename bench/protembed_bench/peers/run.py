"""Drive protembed and each peer alone: same sequences, same client, same concurrency levels.

For every server and each of its two batching settings: start it (timed to its first correct answer),
send a few warm-up requests, then at each level send every benchmark sequence once, one sequence per
request, closed loop (``protembed_bench.serve.load.closed_loop``, the raw keep-alive client of
``bench serve``), comparing every answer with raw ONNX Runtime on that sequence alone. The batches a
server formed come from its own counters (protembed's /metrics; the peers' ``PeerModel`` stats file).
Right before and after protembed's top level, raw ONNX Runtime runs the batches protembed's queue forms
from the same stream (``bench serve``'s replay), for the "server vs raw ORT on the same batches" ratio.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protembed_bench.peers import envs
from protembed_bench.peers.catalog import PROTEMBED, SERVERS, SERVERS_DIR, ServerSpec, describe, setting_env
from protembed_bench.peers.peer_model import STATS_ENV, PeerModel

PEERS_DIR = Path(__file__).resolve().parent
# Agreement with raw ONNX Runtime on the sequence alone, per variant: (max abs difference, min cosine).
# fp32 vectors do not depend on batch-mates beyond float summation order (about 2e-6 here). The
# dynamically quantized int8 file's do (activation scales are per batch): 0.045 abs / cosine 0.9995 in
# padded batches of 32; the report measures this on the run's own sequences beside the tolerance, and
# the closest two distinct sequences' cosine, which a mixed-up answer would fall to.
TOLERANCE: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 0.99999),
    "fp16": (0.02, 0.9999),
    "int8": (0.1, 0.999),
}


@dataclass
class PeersConfig:
    model_dir: Path
    corpus: Path
    variant: str = "auto"  # as protembed serves on the CPU: int8 when the card has it
    threads: int = 2
    sequences: int = 300
    levels: list[int] = field(default_factory=lambda: [1, 8, 64])
    servers: list[str] = field(default_factory=lambda: list(SERVERS))
    seconds_per_level: float = 60.0
    warmup_requests: int = 8
    rounds: int = 1
    seed: int = 0
    env_root: Path = envs.DEFAULT_ROOT
    install: bool = True
    startup_timeout_s: float = 180.0
    raw_min_seconds: float = 3.0


class WrongAnswer(Exception):
    pass


class Checker:
    """Every answer against the reference for its sequence; keeps the worst agreement seen."""

    def __init__(self, references: dict[str, np.ndarray], abs_tol: float, min_cos: float) -> None:
        self.references, self.abs_tol, self.min_cos = references, abs_tol, min_cos
        self.reset()

    def reset(self) -> None:
        self.checked, self.max_abs, self.worst_cos = 0, 0.0, 1.0

    def check(self, sequence: str, vector: np.ndarray) -> None:
        ref = self.references[sequence]
        if vector.shape != ref.shape:
            raise WrongAnswer(f"vector of shape {vector.shape}, expected {ref.shape}")
        diff = float(np.abs(vector - ref).max())
        cos = float(vector @ ref / (np.linalg.norm(vector) * np.linalg.norm(ref)))
        self.checked += 1
        self.max_abs, self.worst_cos = max(self.max_abs, diff), min(self.worst_cos, cos)
        if not (diff <= self.abs_tol and cos >= self.min_cos):
            raise WrongAnswer(f"length {len(sequence)}: max abs diff {diff:.3g}, cosine {cos:.6f}")

    def summary(self) -> dict[str, Any]:
        return {"checked": self.checked, "max_abs_diff": self.max_abs, "min_cosine": self.worst_cos}


# --- one server process -----------------------------------------------------------------------------
class Running:
    """A started server: protembed through ``bench serve``'s launcher, a peer from its own venv."""

    def __init__(
        self,
        spec: ServerSpec,
        cfg: PeersConfig,
        setting: dict[str, Any],
        python: Path | None,
        log_path: Path,
        stats_path: Path,
    ) -> None:
        from protembed.testing import free_port

        self.spec, self.log_path, self.stats_path = spec, log_path, stats_path
        self.started = time.perf_counter()
        self.server: Any = None
        self.proc: subprocess.Popen[bytes]
        if spec.name == PROTEMBED:
            from protembed_bench.serve.config import ServeBenchConfig
            from protembed_bench.serve.server import ServerProcess

            serve_cfg = ServeBenchConfig(
                model_dir=cfg.model_dir,
                corpus=cfg.corpus,
                variant=cfg.variant,
                threads=cfg.threads,
                transports=["http"],
                server_env={**setting_env(spec, setting), "PROTEMBED_CACHE_MAX_BYTES": "0"},
            )
            self.server = ServerProcess(serve_cfg, log_path)
            self.proc, self.port = self.server.proc, self.server.port
            self.command = " ".join(self.server.command)
            return
        assert python is not None
        self.port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PROTEMBED_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "REDIS_URL")
        }
        env.update(setting_env(spec, setting))
        env.update(
            {
                "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": str(PEERS_DIR),  # peer_model, imported by every wrapper
                "PROTEMBED_PEER_MODEL": str(Path(cfg.model_dir).resolve()),
                "PROTEMBED_PEER_VARIANT": cfg.variant,
                "PROTEMBED_PEER_THREADS": str(cfg.threads),
                "PROTEMBED_PEER_PORT": str(self.port),
                "PROTEMBED_PEER_PORT2": str(free_port()),
                "PROTEMBED_PEER_PORT3": str(free_port()),
                STATS_ENV: str(stats_path),
            }
        )
        argv = spec.command(python, self.port)
        self.command = " ".join([Path(argv[0]).name, *argv[1:]])
        with log_path.open("wb") as fh:
            # Its own session, so that stop() reaches every process a framework forks (workers, Ray's
            # raylet) by the one group id.
            self.proc = subprocess.Popen(
                argv, cwd=SERVERS_DIR, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_first_answer(self, timeout_s: float, probe: str, checker: Checker) -> float:
        """Seconds from spawn to the first correct answer (what a user waits for after starting it)."""
        import httpx

        end = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode} during start: {self.log_tail()}")
            try:
                resp = httpx.post(
                    f"http://127.0.0.1:{self.port}{self.spec.path}", json=self.spec.payload(probe), timeout=30
                )
                if resp.status_code == 200:
                    checker.check(probe, self.spec.vector(resp.content))
                    return time.perf_counter() - self.started
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
        raise RuntimeError(f"no answer after {timeout_s:.0f}s (last: {last}): {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " / ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            return
        # Frameworks fork helpers, some in sessions of their own (Ray's actors): take the whole tree's ids
        # first, ask the group to stop, then kill by id whatever of that tree outlived it.
        tree = descendants(self.proc.pid)
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + 10
        while (alive := [p for p in tree if Path(f"/proc/{p}").exists() and not _zombie(p)]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def descendants(root: int) -> list[int]:
    """Ids of every process below ``root`` (from /proc; empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


# --- batches formed ---------------------------------------------------------------------------------
def stats_offset(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def peer_batching(path: Path, offset: int) -> dict[str, float | None]:
    """Batches a peer's model ran since ``offset`` of its stats file (items, real, padded, seconds)."""
    if not path.exists():
        return {"batches": 0, "mean_batch_size": None, "padding_share_of_tokens": None}
    with path.open() as fh:
        fh.seek(offset)
        rows = [tuple(map(float, line.split())) for line in fh if line.strip()]
    items = sum(r[0] for r in rows)
    real, padded = sum(r[1] for r in rows), sum(r[2] for r in rows)
    return {
        "batches": len(rows),
        "mean_batch_size": items / len(rows) if rows else None,
        "padding_share_of_tokens": 1.0 - real / padded if padded else None,
        "model_seconds": sum(r[3] for r in rows),
    }


# --- one level --------------------------------------------------------------------------------------
async def drive(
    spec: ServerSpec, port: int, sequences: list[str], concurrency: int, seconds: float, checker: Checker
) -> dict[str, Any]:
    from protembed_bench.serve.clients import RawHttpClient
    from protembed_bench.serve.load import closed_loop

    client = RawHttpClient("127.0.0.1", port)

    async def call(seq: str) -> bool:
        status, body = await client.post_json(spec.path, spec.payload(seq))
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        checker.check(seq, spec.vector(body))
        return False

    try:
        return await closed_loop(call, sequences, concurrency, seconds)
    finally:
        await client.aclose()


def run_setting(
    spec: ServerSpec,
    cfg: PeersConfig,
    setting: dict[str, Any],
    python: Path | None,
    sequences: list[str],
    checker: Checker,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One server with one setting, through every level; errors are recorded, never raised."""
    from protembed_bench.serve.clients import run_client

    tag = f"{spec.name}-{len(list(work.glob(spec.name + '-*.log')))}"
    out: dict[str, Any] = {"setting": setting, "levels": [], "error": None}
    running = None
    try:
        checker.reset()
        running = Running(spec, cfg, setting, python, work / f"{tag}.log", work / f"{tag}.stats")
        out["command"] = running.command
        out["startup_s"] = running.wait_first_answer(cfg.startup_timeout_s, "MKTAYIAKQRQISFVKSHFSRQ", checker)
        log(f"bench peers: {spec.name} ({describe(setting)}) answered {out['startup_s']:.1f} s after start")
        warm = sequences[: cfg.warmup_requests]
        run_client(drive(spec, running.port, warm, 4, cfg.seconds_per_level, checker))
        if spec.name == PROTEMBED:
            out["batching"] = _protembed_batching(running.port)
        for concurrency in cfg.levels:
            raw_before = None
            if spec.name == PROTEMBED and concurrency == max(cfg.levels):
                measure_raw = _prepare_raw(cfg, sequences, out["batching"])
                raw_before = measure_raw()
            checker.reset()
            before = _batching_before(spec, running)
            row = run_client(
                drive(spec, running.port, sequences, concurrency, cfg.seconds_per_level, checker)
            )
            row["batching"] = _batching_after(spec, running, before)
            row["correctness"] = checker.summary()
            if raw_before is not None:
                raw_after = measure_raw()
                out["raw_ort"] = _raw_summary(raw_before, raw_after, row["residues_per_s"])
            out["levels"].append(row)
            padding = row["batching"].get("padding_share_of_tokens")
            log(
                f"bench peers: {spec.name} x{concurrency}: {row['residues_per_s']:.0f} res/s, "
                f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, errors {row['errors']}, "
                f"mean batch {row['batching'].get('mean_batch_size') or 0:.1f}, padding {padding or 0:.2f}"
                + (
                    f"; raw ORT same batches ratio {out['raw_ort']['ratio']:.3f}"
                    if "raw_ort" in out and concurrency == max(cfg.levels)
                    else ""
                )
            )
    except Exception as exc:  # a server that fails is reported, and the others still run
        out["error"] = f"{type(exc).__name__}: {exc}"[:1500]
        log(f"bench peers: {spec.name} ({describe(setting)}) failed: {out['error'][:300]}")
    finally:
        if running is not None:
            running.stop()
    return out


def _protembed_batching(port: int) -> dict[str, Any]:
    import httpx

    info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=10).json()
    return {k: v for k, v in info.get("batching", {}).items() if not k.startswith("queued_")}


def _batching_before(spec: ServerSpec, running: Running) -> Any:
    if spec.name == PROTEMBED:
        from protembed_bench.serve.metrics import scrape

        return scrape(f"http://127.0.0.1:{running.port}")
    return stats_offset(running.stats_path)


def _batching_after(spec: ServerSpec, running: Running, before: Any) -> dict[str, Any]:
    if spec.name == PROTEMBED:
        from protembed_bench.serve.metrics import batching_delta, scrape

        return dict(batching_delta(before, scrape(f"http://127.0.0.1:{running.port}")))
    return peer_batching(running.stats_path, before)


def _prepare_raw(
    cfg: PeersConfig, sequences: list[str], batching: dict[str, Any]
) -> Callable[[], dict[str, Any]]:
    from protembed_bench.peers import raw

    return raw.prepare(
        cfg.model_dir, cfg.variant, cfg.threads, sequences, batching, max(cfg.levels), cfg.raw_min_seconds
    )


def _raw_summary(before: dict[str, Any], after: dict[str, Any], server: float) -> dict[str, Any]:
    """Raw ONNX Runtime just before and just after protembed's top level, averaged: the host's speed
    drifts over minutes, and both sides of the ratio should see the same minutes."""
    mean = {k: statistics.fmean([before[k], after[k]]) for k in before if k.endswith("_residues_per_s")}
    return {
        **before,
        **mean,
        "passes": [before, after],
        "ratio": server / mean["same_batches_residues_per_s"],
        "ratio_to_length_sorted": server / mean["length_sorted_residues_per_s"],
    }


# --- the reference and the whole run ----------------------------------------------------------------
def sample(cfg: PeersConfig, crop: int) -> list[str]:
    """Distinct corpus sequences cut at the model's maximum length, in a seeded random order."""
    from protembed_bench.model import sample_sequences

    pool = list(dict.fromkeys(sample_sequences(cfg.corpus, cfg.sequences * 2, cfg.seed, crop)))
    if len(pool) < cfg.sequences:
        raise ValueError(f"{cfg.corpus}: {len(pool)} distinct sequences, {cfg.sequences} wanted")
    order = np.random.default_rng(cfg.seed).permutation(len(pool))[: cfg.sequences]
    return [pool[i] for i in order]


def references(cfg: PeersConfig, sequences: list[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Raw ONNX Runtime on each sequence alone, and how much the file's own vectors move in padded
    batches (arrival order, 32 at a time) and how close two distinct sequences' vectors come."""
    model = PeerModel(cfg.model_dir, cfg.variant, cfg.threads)
    probe = "MKTAYIAKQRQISFVKSHFSRQ"
    refs = {s: model.embed([s])[0] for s in [*sequences, probe]}
    alone = np.stack([refs[s] for s in sequences])
    batched = np.concatenate([model.embed(sequences[i : i + 32]) for i in range(0, len(sequences), 32)])
    unit = alone / np.linalg.norm(alone, axis=1, keepdims=True)
    cos = (unit * (batched / np.linalg.norm(batched, axis=1, keepdims=True))).sum(1)
    pair = unit @ unit.T
    np.fill_diagonal(pair, -1.0)
    return refs, {
        "batched_32_max_abs_diff": float(np.abs(alone - batched).max()),
        "batched_32_min_cosine": float(cos.min()),
        "closest_distinct_cosine": float(pair.max()),
    }


def run_peers_bench(cfg: PeersConfig, work: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    from protembed.artifact import read_model_card
    from protembed.core import AUTO_VARIANT, variant_for
    from protembed_bench.model import length_stats

    unknown = [s for s in cfg.servers if s not in SERVERS]
    if unknown:
        raise ValueError(f"unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
    card = read_model_card(cfg.model_dir)
    if cfg.variant == AUTO_VARIANT:  # what protembed serves on the CPU, and every peer runs the same file
        cfg.variant = variant_for(card, "CPUExecutionProvider")
    if cfg.variant not in TOLERANCE:
        raise ValueError(
            f"variant {cfg.variant!r}: no correctness tolerance defined (known: {list(TOLERANCE)})"
        )
    sequences = sample(cfg, card.max_length)
    refs, file_check = references(cfg, sequences)
    checker = Checker(refs, *TOLERANCE[cfg.variant])
    servers: dict[str, dict[str, Any]] = {}
    pythons: dict[str, Path | None] = {}
    for name in cfg.servers:
        spec = SERVERS[name]
        if name == PROTEMBED:
            from protembed_bench.peers.envs import PeerEnv

            env = PeerEnv(name, None, versions=_own_versions(spec.distributions))
        else:
            env = envs.ensure(spec, cfg.env_root, cfg.install, log)
            if env.error:
                log(f"bench peers: {name}: not installed: {env.error[:300]}")
        pythons[name] = env.python
        servers[name] = {
            "title": spec.title,
            "note": spec.note,
            "versions": env.versions,
            "install": {"ok": env.error is None, "seconds": env.install_seconds, "error": env.error},
            "runs": [],
        }
    for round_ in range(cfg.rounds):
        for name in cfg.servers:
            if not servers[name]["install"]["ok"]:
                continue
            for setting in SERVERS[name].settings:
                run = run_setting(SERVERS[name], cfg, setting, pythons[name], sequences, checker, work, log)
                run["round"] = round_
                servers[name]["runs"].append(run)
    return {
        "model": {
            "folder": str(cfg.model_dir),
            "id": card.id,
            "version": card.version,
            "variant": cfg.variant,
            # Which bytes every server ran: a model folder can be rewritten between runs.
            "sha256": next((f.sha256 for f in card.files if f.variant == cfg.variant), None),
        },
        "settings": {
            "threads": cfg.threads,
            "levels": cfg.levels,
            "sequences": cfg.sequences,
            "seconds_per_level": cfg.seconds_per_level,
            "warmup_requests": cfg.warmup_requests,
            "rounds": cfg.rounds,
            "seed": cfg.seed,
            "crop": card.max_length,
            "env_root": str(cfg.env_root),
            "tolerance": {"max_abs_diff": TOLERANCE[cfg.variant][0], "min_cosine": TOLERANCE[cfg.variant][1]},
        },
        "workload": length_stats(sequences),
        "file_check": file_check,
        "servers": servers,
        "headline": headline(servers, max(cfg.levels)),
    }


def _own_versions(distributions: tuple[str, ...]) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in distributions:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


# --- headline figures -------------------------------------------------------------------------------
def top_row(run: dict[str, Any], top: int) -> dict[str, Any] | None:
    """A run's row at the top level, if it completed it with every answer right."""
    rows = [r for r in run["levels"] if r["concurrency"] == top and r["errors"] == 0 and r["requests"]]
    return rows[0] if rows and run["error"] is None else None


def top_value(run: dict[str, Any], top: int, key: str) -> float:
    """``key`` (e.g. residues_per_s) of a clean run's top-level row."""
    row = top_row(run, top)
    if row is None:
        raise ValueError(f"run {run['setting']} has no clean row at {top} in flight")
    return float(row[key])


def best_run(server: dict[str, Any], top: int, round_: int | None = None) -> dict[str, Any] | None:
    """The setting kept for a server: the clean run with the most residues/s at the top level."""
    runs = [r for r in server["runs"] if top_row(r, top) and (round_ is None or r["round"] == round_)]
    return max(runs, key=lambda r: top_value(r, top, "residues_per_s"), default=None)


def headline(servers: dict[str, dict[str, Any]], top: int) -> dict[str, Any]:
    out: dict[str, Any] = {"top_level": top}
    mine = best_run(servers[PROTEMBED], top) if PROTEMBED in servers else None
    peers = [(n, best_run(s, top)) for n, s in servers.items() if n != PROTEMBED]
    ranked = sorted(
        ((n, r) for n, r in peers if r is not None), key=lambda nr: -top_value(nr[1], top, "residues_per_s")
    )
    if mine:
        out["protembed_residues_per_s"] = top_value(mine, top, "residues_per_s")
        out["protembed_p99_ms"] = top_value(mine, top, "p99_ms")
        out["protembed_setting"] = mine["setting"]
        if "raw_ort" in mine:
            out["protembed_vs_raw_ort_same_batches"] = mine["raw_ort"]["ratio"]
            out["protembed_vs_raw_ort_length_sorted"] = mine["raw_ort"]["ratio_to_length_sorted"]
    if ranked:
        out["best_peer"] = ranked[0][0]
        out["best_peer_residues_per_s"] = top_value(ranked[0][1], top, "residues_per_s")
    if mine and ranked:
        out["protembed_vs_best_peer"] = out["protembed_residues_per_s"] / out["best_peer_residues_per_s"]
        per_round = []
        for rd in sorted({r["round"] for s in servers.values() for r in s["runs"]}):
            # The same ratio within each round: its two sides were measured minutes apart, not more.
            m = best_run(servers[PROTEMBED], top, rd)
            p = [best_run(s, top, rd) for n, s in servers.items() if n != PROTEMBED]
            best_p = max((top_value(r, top, "residues_per_s") for r in p if r), default=None)
            if m and best_p:
                per_round.append(top_value(m, top, "residues_per_s") / best_p)
        out["protembed_vs_best_peer_per_round"] = per_round
        out["p99_no_worse_than_any_peer"] = all(
            out["protembed_p99_ms"] <= top_value(r, top, "p99_ms") for _, r in ranked
        )
    out["failed"] = sorted(
        n for n, s in servers.items() if not s["install"]["ok"] or not any(top_row(r, top) for r in s["runs"])
    )
    return out
