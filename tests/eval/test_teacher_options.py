"""Teacher loader options as given on the command line, and the float32 guard teachers run under."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from protembed_bench.commands._options import parse_teacher_options
from protembed_distill.teachers.base import exact_float32


def test_teacher_options_are_typed() -> None:
    got = parse_teacher_options(
        [
            "unirep1900.max_batch_size=64",
            "esm2.model=/some/path",
            "near.device=cuda",
            "near.amp=false",
            "esm2.layer=2",
        ]
    )
    assert got == {
        "unirep1900": {"max_batch_size": 64},
        "esm2": {"model": "/some/path", "layer": 2},
        "near": {"device": "cuda", "amp": False},
    }
    assert type(got["unirep1900"]["max_batch_size"]) is int  # not the string "64" a loader would choke on
    assert parse_teacher_options(['esm2.model="64"']) == {"esm2": {"model": "64"}}  # quotes keep a string
    assert parse_teacher_options([]) == {}


@pytest.mark.parametrize("item", ["near=cuda", "near.device", ".device=cuda", "near.=cuda"])
def test_malformed_teacher_options_are_rejected(item: str) -> None:
    with pytest.raises(ValueError, match=r"expected NAME\.KEY=VALUE"):
        parse_teacher_options([item])


@pytest.fixture
def tf32_flags() -> Iterator[None]:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.usefixtures("tf32_flags")
def test_exact_float32_leaves_cpu_alone_and_turns_tf32_off_on_cuda() -> None:
    for flag in (True, False):  # both settings, so a CPU call that resets either way is caught
        torch.backends.cuda.matmul.allow_tf32 = flag
        torch.backends.cudnn.allow_tf32 = flag
        exact_float32("cpu")
        exact_float32(torch.device("cpu"))
        assert torch.backends.cuda.matmul.allow_tf32 is flag and torch.backends.cudnn.allow_tf32 is flag
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    exact_float32("cuda")  # only sets process flags: no GPU needed
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    exact_float32(torch.device("cuda", 1))
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
