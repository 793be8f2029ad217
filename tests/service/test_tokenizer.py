"""The shared tokenizer's rules: what is accepted, what is rejected and how the error reads."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protembed import tokenizer
from protembed.errors import InvalidSequenceError
from protembed.http.schemas import SEQUENCE_SCHEMA


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ACDEFGHIKLMNPQRSTVWY", "ACDEFGHIKLMNPQRSTVWY"),
        ("  mkta\n", "MKTA"),
        ("MKUZOB", "MKXXXX"),
        ("MKT*", "MKT"),
        ("MKT *", "MKT"),
        ("mktx", "MKTX"),
    ],
)
def test_normalize_accepts(raw: str, expected: str) -> None:
    assert tokenizer.normalize(raw) == expected


@pytest.mark.parametrize(
    ("raw", "char", "position"),
    [
        ("MK1T", "1", 3),
        ("MK-T", "-", 3),
        ("M*KT", "*", 2),
        ("MKÄ", "Ä", 3),
        ("MK T", " ", 3),
        ("MKT**", "*", 4),
        ("Mſ", "ſ", 2),  # str.upper() would read it as S
        ("mkﬀ", "ﬀ", 3),  # ... and this as FF
        ("\u00a0MKT", "\u00a0", 1),  # only ASCII whitespace is stripped
    ],
)
def test_normalize_rejects_with_character_and_position(raw: str, char: str, position: int) -> None:
    with pytest.raises(InvalidSequenceError) as info:
        tokenizer.normalize(raw, 7)
    err = info.value
    assert (err.index, err.character, err.position) == (7, char, position)
    assert err.message.startswith("item 7:") and repr(char) in err.message


@pytest.mark.parametrize("raw", ["", "   ", "*", "\n\t"])
def test_empty_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidSequenceError, match="empty"):
        tokenizer.normalize(raw, 0)


def test_non_string_is_rejected() -> None:
    with pytest.raises(InvalidSequenceError, match="expected a string"):
        tokenizer.normalize(42, 1)  # type: ignore[arg-type]


def test_with_item_names_the_id() -> None:
    with pytest.raises(InvalidSequenceError) as info:
        tokenizer.normalize("A1")
    err = info.value.with_item(3, "P12345")
    assert err.message == "item 3 (id 'P12345'): invalid character '1' at position 2"


def test_batch_encode_pads_with_zero_and_masks() -> None:
    batch = tokenizer.batch_encode(["AC", "MKTY"])
    assert batch.input_ids.dtype == np.int64 and batch.input_ids.shape == (2, 4)
    assert batch.input_ids[0, 2:].tolist() == [tokenizer.PAD_ID] * 2
    assert batch.attention_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.padded_tokens == 8 and batch.real_tokens == 6
    assert tokenizer.TOKENS[batch.input_ids[1, 0]] == "M"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ACMKxbuz*- 1.\t\n\v\x1c\u00a0\u2003ſﬀıÄ")), max_size=12))
def test_openapi_pattern_accepts_exactly_what_normalize_accepts(raw: str) -> None:
    """The pattern the OpenAPI document gives clients (and schema-driven fuzzers) is the tokenizer's rule."""
    try:
        tokenizer.normalize(raw, 0)
        accepted = True
    except InvalidSequenceError:
        accepted = False
    assert (re.fullmatch(SEQUENCE_SCHEMA["pattern"], raw) is not None) == accepted, repr(raw)
