"""Action codecs: never raise on any text, round trip within resolution, regex-matching answers decode."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from covr_ray.errors import CodecError
from covr_ray.prior.codecs import SPEED_COMMANDS, STEER_COMMANDS, ActionCodec, get_codec

CODECS = {
    "driving-2": get_codec("driving", 2),
    "numeric-1": get_codec("numeric", 1),
    "numeric-6": get_codec("numeric", 6),
}
_SETTINGS = settings(max_examples=1000, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow])


def _near_miss(codec: ActionCodec) -> st.SearchStrategy[str]:
    """Valid answers cut, spliced, repeated and sprinkled with junk: the malformed answers a model writes."""
    valid = arrays(np.float64, codec.action_dim, elements=st.floats(-1, 1)).map(codec.encode)
    junk = st.text(alphabet=st.sampled_from(list("[](),.-+e 0123456789abcdefghijklmnopqrstuvwxyz\n\t")),
                   max_size=30)
    words = st.lists(st.sampled_from(list(STEER_COMMANDS + SPEED_COMMANDS) + ["not", "and", "nan", "inf",
                                                                             "1e999", "-", "[", "]"]),
                     max_size=6).map(" ".join)
    cut = st.tuples(valid, st.integers(0, 60), st.integers(0, 60)).map(lambda t: t[0][t[1]:t[1] + t[2]])
    return st.one_of(st.text(max_size=200), st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
                     st.tuples(junk, valid, junk).map("".join), words, cut,
                     st.tuples(valid, valid).map(" ".join), junk)


@pytest.mark.parametrize("key", ["driving-2", "numeric-6"])  # one of each codec
def test_decode_never_raises_on_1000_malformed_strings(key: str) -> None:
    codec = CODECS[key]
    seen = {"none": 0, "action": 0}

    @_SETTINGS
    @given(_near_miss(codec))
    def check(text: str) -> None:
        out = codec.decode(text)
        if out is None:
            seen["none"] += 1
            return
        seen["action"] += 1
        assert out.shape == (codec.action_dim,) and out.dtype == np.float32
        assert np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1.0)

    check()
    # The generator must exercise both outcomes, or the test proves nothing about either.
    assert seen["none"] > 50 and seen["action"] > 50, seen


@pytest.mark.parametrize("key", sorted(CODECS))
def test_non_strings_and_huge_strings_are_no_prior(key: str) -> None:
    codec = CODECS[key]
    for junk in (None, 3, b"[0.1]", ["keep lane"], "x" * 100_000, "[" * 5000):
        assert codec.decode(junk) is None


@pytest.mark.parametrize("key", sorted(CODECS))
def test_round_trip_within_resolution(key: str) -> None:
    codec = CODECS[key]

    @settings(max_examples=1000 if key != "numeric-1" else 200, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(arrays(np.float64, codec.action_dim, elements=st.floats(-1, 1)))
    def check(action: np.ndarray) -> None:
        text = codec.encode(action)
        assert re.fullmatch(codec.regex, text), (text, codec.regex)
        assert len(text) <= codec.max_answer_chars
        back = codec.decode(text)
        assert back is not None
        np.testing.assert_allclose(back, action, atol=codec.resolution + 1e-6)

    check()


@pytest.mark.parametrize("key", sorted(CODECS))
def test_every_regex_match_decodes_to_a_fixed_point(key: str) -> None:
    codec = CODECS[key]

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(st.from_regex(codec.regex, fullmatch=True))
    def check(text: str) -> None:
        action = codec.decode(text)
        assert action is not None, text
        # A canonical answer decodes to a level the codec itself would write back unchanged.
        assert codec.decode(codec.encode(action)) == pytest.approx(action, abs=1e-6)

    check()


def test_driving_reads_paper_style_free_text() -> None:
    codec = get_codec("driving", 2)
    third = 1.0 / 3.0
    assert codec.decode("turn left slightly, accelerate") == pytest.approx([-third, 2 * third])
    assert codec.decode("Decelerate and turn right.") == pytest.approx([2 * third, -third])
    assert codec.decode("I would accelerate forward") == pytest.approx([0.0, 2 * third])  # steer neutral
    assert codec.decode("KEEP  LANE") == pytest.approx([0.0, 0.0])
    assert codec.decode("brake hard, turn right sharply") == pytest.approx([1.0, -1.0])
    assert codec.decode("turn left, then turn right") is None  # ambiguous steering
    assert codec.decode("accelerate or brake") is None  # ambiguous speed
    assert codec.decode("the road is clear") is None
    assert codec.encode(np.array([0.0, 1.0])) == "keep lane, accelerate hard"
    assert codec.encode([-1.0, -1.0]) == "turn left sharply, brake hard"


def test_numeric_reads_free_text_and_refuses_out_of_range() -> None:
    codec = get_codec("numeric", 3)
    assert codec.decode("[0.1, -0.5, 1.0]") == pytest.approx([0.1, -0.5, 1.0])
    assert codec.decode("Action: 0.1 0.2 0.3") == pytest.approx([0.1, 0.2, 0.3])
    assert codec.decode("for dims [1, 2] I pick [0.5, 0.5, -0.5]") == pytest.approx([0.5, 0.5, -0.5])
    assert codec.decode("[1.004, 0, 0]") == pytest.approx([1.0, 0.0, 0.0])  # within resolution: clipped
    assert codec.decode("[2, 0, 0]") is None  # out of range: no prior, not a clipped guess
    assert codec.decode("[1e400, 0, 0]") is None
    assert codec.decode("[0.1, 0.2]") is None  # wrong count
    assert codec.encode([0.125, -0.001, 1.0]) in ("[0.12, 0.00, 1.00]", "[0.13, 0.00, 1.00]")


@pytest.mark.parametrize("name,dim", [("driving", 3), ("driving", 1), ("numeric", 0), ("numeric", 65),
                                      ("numeric", 2.5), ("text", 2)])
def test_get_codec_refuses_bad_arguments(name: str, dim: object) -> None:
    with pytest.raises(CodecError, match=repr(dim) if name != "text" else "'text'"):
        get_codec(name, dim)  # type: ignore[arg-type]


@pytest.mark.parametrize("action", [[0.0], [0.0, 0.0, 0.0], [np.nan, 0.0], [1.5, 0.0], "ab", [[0.0, 0.0]]])
def test_encode_refuses_bad_actions(action: object) -> None:
    with pytest.raises(CodecError, match="allowed"):
        get_codec("driving", 2).encode(action)
