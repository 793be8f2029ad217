"""The Engine in-process on the tiny ONNX model: outputs, limits, chunking, caching, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gated_backend import gated_backend
from protembed.artifact import read_model_card
from protembed.cache import MemoryCache
from protembed.core import (
    CPU_BATCH_TOKENS,
    GPU_BATCH_TOKENS,
    EmbedInput,
    EmbedOptions,
    Engine,
    batch_tokens_for,
    variant_for,
)
from protembed.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    InvalidSequenceError,
    ModelOutputError,
    NotReadyError,
    ProtembedError,
    RequestCancelledError,
    RequestTooLargeError,
    SequenceTooLongError,
)
from protembed.settings import Settings
from protembed.windows import plan_windows, pool_windows
from tiny_model import reference_embeddings

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "ac", "WYWYWYWYWYWYWYWYWYWYWYWYWYWYWYWYWYWY", "mkuzob*"]


@pytest.fixture
async def engine(make_settings: Callable[..., Settings]) -> AsyncIterator[Engine]:
    eng = Engine.from_settings(make_settings(max_items_per_request=8, max_residues_per_request=200))
    await eng.start()
    yield eng
    await eng.stop()


def inputs(*seqs: str) -> list[EmbedInput]:
    return [EmbedInput(s, id=f"id{i}") for i, s in enumerate(seqs)]


async def test_mixed_batch_equals_each_alone(engine: Engine, tiny_model_dir: Path) -> None:
    resp = await engine.embed(inputs(*SEQS), EmbedOptions())
    assert (resp.model, resp.output, resp.dim, resp.items) == ("protembed-tiny", "student", 8, 4)
    assert resp.residues == sum(len(s.rstrip("*")) for s in SEQS)
    for r, s in zip(resp.results, SEQS, strict=True):
        assert r.embedding.dtype == np.float32
        assert np.abs(r.embedding - reference_embeddings(tiny_model_dir, s)["student"]).max() <= 1e-4
    assert [r.id for r in resp.results] == ["id0", "id1", "id2", "id3"]


async def test_teacher_output_per_residue_and_normalize(engine: Engine, tiny_model_dir: Path) -> None:
    alpha = await engine.embed(inputs(*SEQS), EmbedOptions(output="alpha"))
    assert alpha.dim == 6 and alpha.output == "alpha"
    ref = reference_embeddings(tiny_model_dir, SEQS[0])
    assert np.abs(alpha.results[0].embedding - ref["teacher_alpha"]).max() <= 1e-4
    res = await engine.embed(inputs(*SEQS), EmbedOptions(per_residue=True))
    assert res.per_residue and [r.embedding.shape for r in res.results] == [(22, 8), (2, 8), (36, 8), (6, 8)]
    assert np.abs(res.results[0].embedding - ref["residue_states"]).max() <= 1e-4
    norm = await engine.embed(inputs(*SEQS), EmbedOptions(output="beta", normalize=True))
    assert all(abs(float(np.linalg.norm(r.embedding)) - 1) < 1e-5 for r in norm.results)


async def test_non_finite_model_output_is_an_error_never_cached(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert engine.model is not None
    real = engine.model.run
    bad = "WYWYWYWYWY"

    def poisoned(batch: Any, outputs: Any) -> dict[str, np.ndarray]:
        out = real(batch, outputs)
        for arr in out.values():
            arr[batch.lengths == len(bad)] = np.nan
        return out

    monkeypatch.setattr(engine.model, "run", poisoned)
    with pytest.raises(ModelOutputError) as err:
        await engine.embed(inputs("MKTAYIAK", bad), EmbedOptions())
    assert (err.value.index, err.value.item_id, err.value.http_status) == (1, "id1", 500)
    assert err.value.to_dict()["type"] == "model_output" and "item 1 (id 'id1')" in err.value.message
    monkeypatch.undo()
    again = await engine.embed(inputs("MKTAYIAK", bad), EmbedOptions())
    assert [r.cached for r in again.results] == [False, False]  # the failed request cached nothing
    assert all(np.isfinite(r.embedding).all() for r in again.results)


async def test_second_request_is_a_cache_hit_per_output(engine: Engine) -> None:
    first = await engine.embed(inputs("MKTAYIAK"), EmbedOptions())
    again = await engine.embed(inputs("mktayiak "), EmbedOptions())  # same normalized sequence
    other = await engine.embed(inputs("MKTAYIAK"), EmbedOptions(output="alpha"))
    assert [first.results[0].cached, again.results[0].cached, other.results[0].cached] == [False, True, False]
    assert np.array_equal(first.results[0].embedding, again.results[0].embedding)


@pytest.mark.parametrize(
    ("items", "options", "error", "message"),
    [
        ([], EmbedOptions(), InvalidRequestError, "no sequences given"),
        (["A"] * 9, EmbedOptions(), RequestTooLargeError, "9 sequences in one request; the limit is 8"),
        (
            ["M" * 60] * 4,
            EmbedOptions(),
            RequestTooLargeError,
            "240 residues in one request; the limit is 200",
        ),
        (
            ["MK", "M" * 65],
            EmbedOptions(long_sequences="reject"),
            SequenceTooLongError,
            "item 1 (id 'id1'): sequence has 65 residues",
        ),
        (["MK", "M1"], EmbedOptions(), InvalidSequenceError, "item 1 (id 'id1'): invalid character '1'"),
        (["MK", "  "], EmbedOptions(), InvalidSequenceError, "item 1 (id 'id1'): sequence is empty"),
        (["MK"], EmbedOptions(output="nope"), InvalidRequestError, "unknown output 'nope'"),
        (["MK"], EmbedOptions(output="residues"), InvalidRequestError, "unknown output 'residues'"),
        (["MK"], EmbedOptions(output="alpha", per_residue=True), InvalidRequestError, "no per-residue form"),
    ],
)
async def test_bad_requests(
    engine: Engine, items: list[str], options: EmbedOptions, error: type[ProtembedError], message: str
) -> None:
    with pytest.raises(error) as info:
        await engine.embed(inputs(*items), options)
    assert message in info.value.message


async def test_cancelled_request_never_runs(engine: Engine) -> None:
    before = engine.batcher.batches_run
    with pytest.raises(RequestCancelledError):
        await engine.embed(inputs("MCANCELLED"), EmbedOptions(), cancelled=lambda: True)
    assert engine.batcher.batches_run == before


async def test_not_ready_before_start(make_settings: Callable[..., Settings]) -> None:
    eng = Engine.from_settings(make_settings())
    with pytest.raises(NotReadyError):
        await eng.embed(inputs("MK"), EmbedOptions())


def test_windows_cover_every_residue_once() -> None:
    for length in (64, 65, 100, 129, 300):
        windows = plan_windows(length, 64, 16)
        owned = [i for w in windows for i in range(w.own_start, w.own_end)]
        assert owned == list(range(length))
        assert all(w.end - w.start <= 64 and w.start <= w.own_start < w.own_end <= w.end for w in windows)


async def test_chunk_mode_stitches_long_sequences(
    make_settings: Callable[..., Settings], tiny_model_dir: Path
) -> None:
    eng = Engine.from_settings(make_settings(long_sequences="chunk", chunk_overlap=16))
    await eng.start()
    try:
        rng = np.random.default_rng(1)
        long = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 150))
        ref = reference_embeddings(tiny_model_dir, long)  # the model itself takes any length
        res = await eng.embed(inputs(long), EmbedOptions(per_residue=True))
        # residue states are per-position here, so stitching is exact
        assert np.abs(res.results[0].embedding - ref["residue_states"]).max() <= 1e-5
        vec = (await eng.embed(inputs(long), EmbedOptions())).results[0].embedding
        windows = plan_windows(150, 64, 16)
        pieces = [reference_embeddings(tiny_model_dir, long[w.start : w.end])["student"] for w in windows]
        assert np.abs(vec - pool_windows(windows, pieces, per_residue=False)).max() <= 1e-5
        cos = float(vec @ ref["student"] / np.linalg.norm(vec) / np.linalg.norm(ref["student"]))
        assert cos > 0.99  # and close to the whole-sequence vector
    finally:
        await eng.stop()


async def test_info_reports_provider_limits_and_batching(engine: Engine) -> None:
    info: dict[str, Any] = engine.info()
    assert info["provider"] == "CPUExecutionProvider" and info["ready"] is True
    assert info["limits"]["max_items_per_request"] == 8 and info["limits"]["max_length"] == 64
    assert engine.settings.max_batch_tokens == 0  # the default: by provider
    assert info["batching"]["max_batch_tokens"] == CPU_BATCH_TOKENS
    assert info["cache"]["backend"] == "memory" and info["card"]["id"] == "protembed-tiny"


async def test_cache_hit_touches_neither_batcher_nor_threads(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await engine.embed(inputs("MKTAYIAK", "MCCHIT"), EmbedOptions())

    async def no_batcher(*args: object, **kwargs: object) -> list[np.ndarray]:
        raise AssertionError("a cache hit reached the batcher")

    def no_thread(*args: object, **kwargs: object) -> object:
        raise AssertionError("a cache hit used a thread")

    monkeypatch.setattr(engine.batcher, "submit", no_batcher)
    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    monkeypatch.setattr(asyncio.get_running_loop(), "run_in_executor", no_thread)
    hit = await engine.embed(inputs("MCCHIT", "mktayiak"), EmbedOptions(normalize=True))
    assert [r.cached for r in hit.results] == [True, True]


async def test_before_compute_runs_once_and_only_when_the_model_is_needed(engine: Engine) -> None:
    calls: list[str] = []
    await engine.embed(
        inputs("MKTAYIAK", "MHOOKED", "MHOOKED"), EmbedOptions(), before_compute=lambda: calls.append("x")
    )
    assert calls == ["x"]  # two misses (one repeated), one call, before the model ran
    hit = await engine.embed(
        inputs("MHOOKED", "mktayiak"), EmbedOptions(), before_compute=lambda: calls.append("y")
    )
    assert [r.cached for r in hit.results] == [True, True]
    assert calls == ["x"]  # an answer wholly from the cache never calls it


async def test_lone_request_is_not_held_for_max_wait(make_settings: Callable[..., Settings]) -> None:
    eng = Engine.from_settings(make_settings(max_wait_ms=20_000))  # an idle model must not wait 20 s
    await eng.start()
    try:
        start = time.monotonic()
        resp = await asyncio.wait_for(eng.embed(inputs("MKTAYIAKQ"), EmbedOptions()), 10.0)
        assert not resp.results[0].cached and time.monotonic() - start < 10.0
    finally:
        await eng.stop()


async def test_batching_policy_and_padding_bound_come_from_settings(
    make_settings: Callable[..., Settings],
) -> None:
    eng = Engine.from_settings(make_settings(batching="fifo", max_padding_ratio=0.25))
    assert (eng.batcher.queue.policy, eng.batcher.queue.max_padding_ratio) == ("fifo", 0.25)
    batching: Any = eng.info()["batching"]
    assert (batching["policy"], batching["max_padding_ratio"]) == ("fifo", 0.25)
    default = Engine.from_settings(make_settings())
    assert (default.batcher.queue.policy, default.batcher.queue.max_padding_ratio) == ("bucketed", 0.1)


async def test_items_queued_behind_a_busy_model_expire_before_it(engine: Engine) -> None:
    before = engine.batcher.batches_run
    with gated_backend(engine) as gated:
        blocker = asyncio.create_task(engine.embed(inputs("MBLOCKER"), EmbedOptions()))
        # dispatched at once (idle model), now held in the model
        assert await asyncio.to_thread(gated.entered.wait, 5)
        late = asyncio.create_task(
            engine.embed(inputs("MLATE"), EmbedOptions(), deadline=time.monotonic() + 0.1)
        )
        await asyncio.sleep(0.3)
    assert not (await blocker).results[0].cached
    with pytest.raises(DeadlineExceededError):
        await late
    assert engine.batcher.batches_run == before + 1  # only the blocker reached the model


async def test_batch_token_budget_follows_the_provider(make_settings: Callable[..., Settings]) -> None:
    # 0 (the default) settles on the active provider's budget once the session is up; a number stays.
    for setting, expected in ((0, CPU_BATCH_TOKENS), (4096, 4096)):
        eng = Engine.from_settings(make_settings(max_batch_tokens=setting))
        await eng.start()
        try:
            assert eng.provider == "CPUExecutionProvider"
            assert eng.info()["batching"]["max_batch_tokens"] == expected
            assert eng.batcher.queue.max_batch_tokens == expected
            resp = await eng.embed(inputs("MKTAYIAKQRQ" * 5, "MK"), EmbedOptions())
            assert resp.items == 2
        finally:
            await eng.stop()
    assert (batch_tokens_for("CPUExecutionProvider"), batch_tokens_for("CUDAExecutionProvider")) == (
        CPU_BATCH_TOKENS,
        GPU_BATCH_TOKENS,
    )
    assert CPU_BATCH_TOKENS < GPU_BATCH_TOKENS


async def test_auto_variant_follows_the_provider_that_runs(
    make_settings: Callable[..., Settings], tiny_model_dir: Path
) -> None:
    card = read_model_card(tiny_model_dir)
    assert variant_for(card, "CPUExecutionProvider") == "int8"
    assert variant_for(card, "CUDAExecutionProvider") == "fp32"
    fp32_only = card.model_copy(update={"files": [f for f in card.files if f.variant == "fp32"]})
    assert variant_for(fp32_only, "CPUExecutionProvider") == "fp32"

    assert Settings.model_fields["model_variant"].default == "auto"
    assert Engine.from_settings(make_settings()).variant == "int8"  # the CPU is the only provider
    assert Engine.from_settings(make_settings(model_variant="fp32")).variant == "fp32"

    # CUDA listed first: fp32 is chosen for it; where the session falls back to the CPU (no device, as
    # on CI), the engine switches to the CPU's variant before it reports ready.
    eng = Engine.from_settings(make_settings(providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    await eng.start()
    try:
        want = "fp32" if eng.provider == "CUDAExecutionProvider" else "int8"
        assert eng.variant == want and eng.info()["model"]["variant"] == want
        assert eng.info()["model"]["file"] == ("model.onnx" if want == "fp32" else "model.int8.onnx")
        resp = await eng.embed(inputs("MKTAYIAK"), EmbedOptions())
        assert resp.results[0].embedding.shape == (8,)
    finally:
        await eng.stop()


async def test_variants_never_share_cached_vectors(
    make_settings: Callable[..., Settings], tiny_model_dir: Path
) -> None:
    # One cache (a shared Redis in production) behind an fp32 and an int8 replica: each variant's
    # vectors are its own.
    shared = MemoryCache(2**20)
    engines = [
        Engine(make_settings(model_variant=v), cache=shared) for v in ("fp32", "int8")
    ]
    for eng in engines:
        await eng.start()
    try:
        fp32, int8 = engines
        assert not (await fp32.embed(inputs("MKTAYIAK"), EmbedOptions())).results[0].cached
        await asyncio.sleep(0.05)  # cache writes happen off the response path
        assert shared.describe()["entries"] == 1
        assert not (await int8.embed(inputs("MKTAYIAK"), EmbedOptions())).results[0].cached
        await asyncio.sleep(0.05)
        assert (await int8.embed(inputs("MKTAYIAK"), EmbedOptions())).results[0].cached
        assert (await fp32.embed(inputs("MKTAYIAK"), EmbedOptions())).results[0].cached
    finally:
        for eng in engines:
            await eng.stop()


async def test_spinning_setting_reaches_the_session(make_settings: Callable[..., Settings]) -> None:
    for spinning, want in ((True, "1"), (False, "0")):
        eng = Engine.from_settings(make_settings(intra_op_spinning=spinning))
        await eng.start()
        try:
            session = eng.model.session  # type: ignore[union-attr]
            opts = session.get_session_options()
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == want
        finally:
            await eng.stop()
