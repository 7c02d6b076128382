"""Tests for filigree.payload: syntax, BCH, scrambling, codec round trips and statistics."""

from __future__ import annotations

import json
import math
import pickle

import bchlib
import numpy as np
import pytest

from filigree.payload import (
    DEFAULT_KEY,
    EccSpec,
    PayloadCodec,
    PayloadError,
    ReadResult,
    Scrambler,
    acceptance_probability,
    bch_decode,
    bch_encode,
    binomial_tail,
    blind_p_value,
    canonical_payload,
    choose_ecc,
    format_payload,
    parse_payload,
    payload_text,
    resolve_key,
)

SPECS = [EccSpec(m=7, t=7, data_bits=51), EccSpec(m=5, t=3, data_bits=16),
         EccSpec(m=6, t=5, data_bits=32), EccSpec(m=7, t=10, data_bits=64)]


def _logits(bits: np.ndarray) -> np.ndarray:
    return 2.0 * np.asarray(bits, dtype=np.float64) - 1.0


def _attainable(n: int, alpha: float) -> float:
    """Largest achievable level <= alpha of the exact binomial test."""
    return max(binomial_tail(n, k) for k in range(n + 2) if binomial_tail(n, k) <= alpha)


def _within(count: int, trials: int, p: float, sigmas: float = 5.0) -> bool:
    mean = trials * p
    return abs(count - mean) <= sigmas * math.sqrt(trials * p * (1 - p)) + 1


# --- payload syntax ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("1a2b", 0x1A2B), ("0x1A2B", 0x1A2B), ("hex:1a2b", 0x1A2B), ("  0x0001a2b ", 0x1A2B),
    ("123", 0x123), ("dec:12345", 12345), ("DEC:7", 7), ("text:abc", int.from_bytes(b"abc", "big")),
    ("text: é", int.from_bytes(" é".encode(), "big")),
])
def test_parse_forms(text, value):
    assert parse_payload(text, 51) == value


@pytest.mark.parametrize("value", [0, 1, 0x1A2B, 2 ** 51 - 1])
def test_format_round_trips(value):
    canonical = format_payload(value, 51)
    assert canonical == format(value, "x").zfill(13)
    assert parse_payload(canonical, 51) == value
    assert parse_payload(format_payload(value, 51, "dec"), 51) == value


def test_text_round_trip_and_canonical():
    assert format_payload("text:hi", 51, "text") == "text:hi"
    assert canonical_payload("text:hi", 51) == "0000000006869"
    assert canonical_payload("0xABC", 16) == "0abc"
    assert payload_text(0xFF) is None
    with pytest.raises(PayloadError, match="not UTF-8 text"):
        format_payload(0xFF, 16, "text")


def test_over_capacity_message():
    with pytest.raises(PayloadError) as info:
        parse_payload("0x" + "f" * 18, 51)
    assert str(info.value) == (
        "payload 0xffffffffffffffffff needs 72 bits but model carries 51 data bits")
    with pytest.raises(PayloadError) as info:
        parse_payload("text:abc", 16)
    assert str(info.value) == "payload 0x616263 needs 23 bits but model carries 16 data bits"
    assert parse_payload("0x" + "7" * 13, 51) == int("7" * 13, 16)


@pytest.mark.parametrize("text,pattern", [
    ("", "empty payload"), ("   ", "empty payload"), ("0x", "bad hex"), ("text:", "empty payload"),
    ("xyz", "bad hex payload 'xyz'"), ("text", "bad hex"), ("dec:12a", "bad decimal"),
    ("dec:-1", "bad decimal"), ("foo:12", "unknown payload prefix 'foo'"), ("text:a\x00", "NUL"),
])
def test_parse_errors(text, pattern):
    with pytest.raises(PayloadError, match=pattern):
        parse_payload(text, 51)


def test_payload_error_is_value_error():
    assert issubclass(PayloadError, ValueError)


# --- BCH --------------------------------------------------------------------------------------

def test_ecc_spec_lengths_and_dict():
    spec = EccSpec(m=7, t=7, data_bits=51)
    assert (spec.ecc_bits, spec.codeword_bits, spec.data_bytes) == (49, 100, 7)
    assert EccSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict() == {"scheme": "bch", "m": 7, "t": 7, "data_bits": 51}
    assert EccSpec(m=6, t=5, data_bits=32).ecc_bits == bchlib.BCH(5, m=6).ecc_bits == 27
    with pytest.raises(ValueError, match="exceed"):
        EccSpec(m=7, t=7, data_bits=80)
    with pytest.raises(ValueError, match="scheme"):
        EccSpec(m=7, t=7, data_bits=51, scheme="ldpc")


@pytest.mark.parametrize("raw,expected", [
    (100, (7, 7, 51)), (64, (6, 5, 32)), (32, (5, 3, 16)), (784, (7, 10, 64)),
])
def test_choose_ecc_examples(raw, expected):
    spec = choose_ecc(raw)
    assert (spec.m, spec.t, spec.data_bits) == expected


def test_choose_ecc_always_fits():
    for raw in range(10, 300):
        spec = choose_ecc(raw)
        assert spec.codeword_bits <= min(raw, 2 ** spec.m - 1)
        assert spec.data_bits >= spec.ecc_bits
    with pytest.raises(ValueError):
        choose_ecc(9)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"m{s.m}t{s.t}k{s.data_bits}")
def test_bch_corrects_up_to_t(spec):
    rng = np.random.default_rng(spec.m * 100 + spec.t)
    n = spec.codeword_bits
    for _ in range(10):
        value = int(rng.integers(0, 2 ** spec.data_bits, dtype=np.uint64))
        word = bch_encode(spec, value)
        assert word.shape == (n,)
        assert bch_decode(spec, word) == (value, 0)
        for errors in range(1, spec.t + 1):
            noisy = word.copy()
            noisy[rng.choice(n, errors, replace=False)] ^= 1
            assert bch_decode(spec, noisy) == (value, errors)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"m{s.m}t{s.t}k{s.data_bits}")
def test_bch_never_returns_original_beyond_t(spec):
    rng = np.random.default_rng(7 + spec.t)
    n, failures, trials = spec.codeword_bits, 0, 0
    for _ in range(40):
        value = int(rng.integers(0, 2 ** spec.data_bits, dtype=np.uint64))
        word = bch_encode(spec, value)
        for errors in range(spec.t + 1, spec.t + 4):
            noisy = word.copy()
            noisy[rng.choice(n, errors, replace=False)] ^= 1
            decoded, corrected = bch_decode(spec, noisy)
            trials += 1
            failures += decoded is None
            assert decoded != value
            assert (decoded is None) == (corrected is None)
    assert failures >= 0.6 * trials


def test_bch_rejects_correction_into_padding():
    spec = EccSpec(m=7, t=7, data_bits=51)
    code = bchlib.BCH(7, m=7)
    value = 0x123456789AB
    data = (value | (1 << 53)).to_bytes(7, "big")
    ecc = np.unpackbits(np.frombuffer(code.encode(data), dtype=np.uint8))[:49]
    bits = np.array([(value >> (50 - i)) & 1 for i in range(51)], dtype=np.uint8)
    assert bch_decode(spec, np.concatenate([bits, ecc])) == (None, None)


# --- keys and scrambling -------------------------------------------------------------------------

def test_scrambler_round_trip_and_key_dependence():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, 784).astype(np.uint8)
    a, b = Scrambler(784, b"alpha"), Scrambler(784, "beta")
    assert sorted(a.perm.tolist()) == list(range(784))
    assert np.array_equal(a.unscramble(a.scramble(bits)), bits)
    logits = rng.normal(size=784)
    expected = np.where(a.mask == 1, -1.0, 1.0) * logits[np.argsort(a.perm)]
    assert np.allclose(a.unscramble_logits(logits), expected)
    assert np.array_equal(a.unscramble_logits(_logits(a.scramble(bits))) > 0, bits == 1)
    assert not np.array_equal(a.perm, b.perm)
    assert not np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.scramble(bits), b.scramble(bits))
    assert np.array_equal(Scrambler(784, "alpha").perm, a.perm)
    assert np.array_equal(Scrambler(784, None).mask, Scrambler(784, DEFAULT_KEY).mask)
    assert 300 < int(a.mask.sum()) < 484


def test_key_never_in_repr_or_pickle():
    secret = "hunter2-very-secret"
    codec = PayloadCodec(100, key=secret)
    for text in (repr(codec), str(codec), repr(codec.scrambler), str(codec.scrambler)):
        assert secret not in text
        assert "<secret>" in text
    assert secret.encode() not in pickle.dumps(codec)
    assert "<default>" in repr(PayloadCodec(100))
    restored = pickle.loads(pickle.dumps(codec))
    assert np.array_equal(restored.encode("abc"), codec.encode("abc"))


def test_resolve_key(tmp_path, monkeypatch):
    monkeypatch.delenv("FILIGREE_KEY", raising=False)
    assert resolve_key(None, None) is None
    assert resolve_key("abc", None) == b"abc"
    path = tmp_path / "key.txt"
    path.write_bytes(b"s3cret-bytes\xff\n")
    assert resolve_key(None, str(path)) == b"s3cret-bytes\xff"
    monkeypatch.setenv("FILIGREE_KEY", "from-env")
    assert resolve_key(None, None) == b"from-env"
    assert resolve_key("explicit", None) == b"explicit"
    assert resolve_key(None, None, env_var=None) is None
    with pytest.raises(ValueError) as info:
        resolve_key("topsecretvalue", str(path))
    assert "topsecretvalue" not in str(info.value) and "s3cret" not in str(info.value)
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty"):
        resolve_key(None, str(empty))
    with pytest.raises(ValueError, match="cannot read key file"):
        resolve_key(None, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="empty"):
        resolve_key("", None)


# --- codec --------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [32, 64, 100, 784])
def test_round_trip(raw):
    rng = np.random.default_rng(raw)
    codec = PayloadCodec(raw, key="k")
    for _ in range(5):
        value = int(rng.integers(0, 2 ** codec.data_bits, dtype=np.uint64))
        bits = codec.encode(value)
        assert bits.dtype == np.float32 and bits.shape == (raw,)
        assert set(np.unique(bits)) <= {0.0, 1.0}
        result = codec.decode(_logits(bits), fpr=1e-3)  # a 16-bit payload's p-value is at best 3e-5
        assert result.detected and result.decoded == format_payload(value, codec.data_bits)
        assert result.corrected == 0
        assert codec.decode(_logits(bits)).detected == (codec.codeword_bits >= 59)
        checked = codec.decode(_logits(bits), expected=value)
        assert checked.detected and checked.ber == 0.0 and checked.match is True


def test_round_trip_with_errors_blind():
    codec = PayloadCodec(100, key="k")
    rng = np.random.default_rng(5)
    bits = codec.encode("text:hello")
    for errors in range(codec.ecc.t + 1):
        logits = _logits(bits)
        logits[rng.choice(100, errors, replace=False)] *= -1
        result = codec.decode(logits, fpr=1.0)
        assert result.decoded == canonical_payload("text:hello", codec.data_bits)
        assert result.corrected == errors
        assert result.p_value == blind_p_value(100, 51, errors)
        strict = codec.decode(logits)  # fpr 1e-6: at most 5 errors
        assert strict.detected == (errors <= 5) and strict.p_value == result.p_value
        assert strict.decoded == (result.decoded if errors <= 5 else None)


def test_repetition_layout_and_soft_combining():
    codec = PayloadCodec(784, key="rep")
    n = codec.codeword_bits
    assert n == 127
    word = codec.codeword("0xdeadbeef")
    logical = codec.scrambler.unscramble(codec.encode("0xdeadbeef").astype(np.uint8))
    assert np.array_equal(logical, word[np.arange(784) % n])
    rng = np.random.default_rng(3)
    signs = _logits(logical)
    for j in range(n):
        copies = np.flatnonzero(np.arange(784) % n == j)
        signs[rng.choice(copies, 2, replace=False)] *= -1
    raw_logits = _logits(codec.scrambler.scramble((signs > 0).astype(np.uint8)))
    hard = (raw_logits > 0) == (codec.encode("0xdeadbeef") > 0.5)
    assert 0.25 < 1 - hard.mean() < 0.4
    result = codec.decode(raw_logits)
    assert result.decoded == format_payload(0xDEADBEEF, 64)
    assert result.corrected == 0 and result.detected
    checked = codec.decode(raw_logits, expected="0xdeadbeef")
    assert checked.match is True and 0.25 < checked.ber < 0.4


def test_wrong_key_not_detected():
    rng = np.random.default_rng(11)
    for raw in (100, 784):
        right, wrong = PayloadCodec(raw, key="right"), PayloadCodec(raw, key="wrong")
        for _ in range(50):
            value = int(rng.integers(0, 2 ** right.data_bits, dtype=np.uint64))
            logits = _logits(right.encode(value)) * rng.uniform(0.5, 2.0, raw)
            assert right.decode(logits).detected
            assert not wrong.decode(logits).detected
            assert not wrong.decode(logits, expected=value).detected


def test_decode_validates_input():
    codec = PayloadCodec(100)
    with pytest.raises(ValueError, match="shape"):
        codec.decode(np.zeros(99))
    with pytest.raises(ValueError, match="NaN"):
        codec.decode(np.full(100, np.nan))
    with pytest.raises(ValueError, match="fpr"):
        codec.decode(np.zeros(100), fpr=0.0)
    with pytest.raises(PayloadError, match="needs"):
        codec.encode("0x" + "f" * 20)
    with pytest.raises(ValueError, match="does not fit"):
        PayloadCodec(90, EccSpec(m=7, t=7, data_bits=51))


def test_read_result_to_dict():
    result = ReadResult("00ab", 1, True, 1e-9, ber=0.1, match=True)
    assert result.to_dict() == {"decoded": "00ab", "corrected": 1, "detected": True,
                                "p_value": 1e-9, "ber": 0.1, "match": True, "framing": None,
                                "grid": None}
    codec = PayloadCodec(100)
    logits = np.random.default_rng(0).normal(size=100)
    for read in (codec.decode(logits), codec.decode(logits, expected="0x1"),
                 codec.decode(_logits(codec.encode("0x1")), expected="0x1")):
        assert json.loads(json.dumps(read.to_dict())) == read.to_dict()


# --- statistics -----------------------------------------------------------------------------------

def test_exact_tails():
    for n in (0, 1, 7, 20):
        for k in range(-1, n + 3):
            brute = sum(math.comb(n, i) for i in range(max(k, 0), n + 1)) / 2 ** n
            assert binomial_tail(n, k) == pytest.approx(brute, rel=1e-15, abs=0)
    assert binomial_tail(784, 784) == 2.0 ** -784
    assert blind_p_value(31, 16, 0) == 2.0 ** -15
    assert blind_p_value(31, 16, 2) == 497 / 2 ** 15
    assert blind_p_value(10, 9, 3) == 1.0


@pytest.mark.parametrize("spec,trials", [(EccSpec(5, 3, 16), 8000), (EccSpec(6, 5, 32), 8000),
                                          (EccSpec(7, 7, 51), 8000)], ids=["m5t3", "m6t5", "m7t7"])
def test_random_words_are_accepted_at_the_theoretical_rate_per_distance(spec, trials):
    """Uniformly random words through the payload layer: the share accepted at each distance d
    matches 2^k C(n, d) / 2^n, the distance reported is the true one, nothing beyond t. (The
    shortened codes' decoder alone "corrects" about 0.5 % of random 100-bit words into
    codewords 14 to 42 bits away.)"""
    n = spec.codeword_bits
    codec = PayloadCodec(n, spec, key="null")
    rng = np.random.default_rng(spec.m)
    counts = np.zeros(spec.t + 1, dtype=int)
    for row in rng.integers(0, 2, size=(trials, n), dtype=np.uint8):
        read = codec.decode(_logits(row), fpr=1.0)
        if read.decoded is None:
            continue
        word = codec.scrambler.unscramble(row)
        assert np.count_nonzero(codec.codeword(int(read.decoded, 16)) != word) == read.corrected <= spec.t
        assert read.p_value == acceptance_probability(spec, read.corrected)
        counts[read.corrected] += 1
    for d in range(spec.t + 1):
        exact = acceptance_probability(spec, d) - (acceptance_probability(spec, d - 1) if d else 0.0)
        assert exact == pytest.approx(math.comb(n, d) * 2.0 ** (spec.data_bits - n))
        assert _within(int(counts[d]), trials, exact), (d, counts[d], trials * exact)


def test_blind_detection_rate_is_the_acceptance_rate_up_to_the_threshold():
    codec = PayloadCodec(32, key="fp")
    spec = codec.ecc
    assert (codec.codeword_bits, codec.data_bits) == (31, 16)
    rng = np.random.default_rng(2024)
    trials = 10000
    reads = [codec.decode(row, fpr=0.02) for row in rng.normal(size=(trials, 32))]
    p = np.array([r.p_value for r in reads])
    for fpr, d_max in ((0.02, 2), (1e-3, 1)):
        theory = acceptance_probability(spec, d_max)
        assert theory <= fpr < acceptance_probability(spec, d_max + 1)
        assert _within(int((p <= fpr).sum()), trials, theory), (fpr, int((p <= fpr).sum()), trials * theory)
    assert sum(r.detected for r in reads) == int((p <= 0.02).sum())
    assert all((r.decoded is not None) == r.detected for r in reads)
    for alpha in (0.1, 0.01, 0.001):  # p-values are never below uniform
        assert (p < alpha).mean() <= alpha + 3 * math.sqrt(alpha / trials)


@pytest.mark.parametrize("raw", [100, 784])
def test_blind_random_logits_never_detected_at_1e6(raw):
    codec = PayloadCodec(raw, key="null")
    rng = np.random.default_rng(raw + 1)
    logits = rng.normal(size=(10000, raw))
    assert not any(codec.decode(row).detected for row in logits)


def test_expected_mode_p_values_uniform_under_null():
    codec = PayloadCodec(100, key="null")
    rng = np.random.default_rng(99)
    trials = 20000
    p = np.array([codec.decode(row, expected="text:abc").p_value
                  for row in rng.normal(size=(trials, 100))])
    for alpha in (0.01, 0.5):
        assert _within(int((p <= alpha).sum()), trials, _attainable(100, alpha))
    assert (p <= 1e-6).sum() == 0


def test_informed_p_scale_from_the_card():
    card = {"payload_bits": 100, "ecc": {"scheme": "bch", "m": 7, "t": 7, "data_bits": 51}}
    plain = PayloadCodec.from_card(card, key="k")
    scaled = PayloadCodec.from_card({**card, "calibration": {"informed_p_scale": 2.0}}, key="k")
    assert plain.informed_p_scale == 1.0 and scaled.informed_p_scale == 2.0
    logits = _logits(plain.encode("0x1"))
    logits[:30] *= -1
    a, b = plain.decode(logits, expected="0x1"), scaled.decode(logits, expected="0x1")
    assert a.p_value == binomial_tail(100, 70) and b.p_value == 2 * a.p_value
    assert plain.decode(logits).p_value == scaled.decode(logits).p_value  # blind reads unchanged
    for bad in (0.5, "2", True, float("nan")):
        with pytest.raises(ValueError, match="informed_p_scale"):
            PayloadCodec.from_card({**card, "calibration": {"informed_p_scale": bad}})
