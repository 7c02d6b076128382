"""Tests for filigree.attacks."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from filigree.attacks import (
    ATTACKS,
    DEFAULT_SUITE,
    DEFAULT_SUITE_SPEC,
    Attack,
    parse_attack,
    parse_suite,
)


def _photo(height: int = 96, width: int = 128, seed: int = 0) -> Image.Image:
    """Smooth colourful content with mild texture, values kept away from 0 and 255."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [0.5 + 0.3 * np.sin(x / 9), 0.5 + 0.3 * np.cos(y / 7), 0.5 + 0.2 * np.sin((x + y) / 13)],
        -1,
    )
    rgb += np.random.default_rng(seed).normal(0, 0.03, rgb.shape).astype(np.float32)
    return Image.fromarray(np.rint(np.clip(rgb, 0.1, 0.6) * 255).astype(np.uint8))


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255


def test_default_suite_contents() -> None:
    names = [attack.name for attack in DEFAULT_SUITE]
    required = [
        "jpeg:75", "jpeg:50", "jpeg:30", "resize:0.5", "resize:0.25", "noise:0.04", "blur:1",
        "brightness:1.3", "contrast:1.3", "crop:0.8", "combo:jpeg:70+resize:0.75+brightness:1.2",
    ]
    assert all(name in names for name in required)
    assert len(set(names)) == len(names)
    assert parse_suite(DEFAULT_SUITE_SPEC) == DEFAULT_SUITE


def test_every_default_attack_runs_and_returns_rgb() -> None:
    image = _photo()
    for attack in DEFAULT_SUITE:
        out = attack(image, seed=1)
        assert isinstance(out, Image.Image) and out.mode == "RGB", attack.name
        assert out.width >= 1 and out.height >= 1


def test_jpeg_output_decodes_and_differs() -> None:
    image = _photo()
    out = parse_attack("jpeg:50")(image)
    assert out.size == image.size
    diff = np.abs(_arr(out) - _arr(image))
    assert 0 < diff.mean() < 0.05
    stronger = np.abs(_arr(parse_attack("jpeg:10")(image)) - _arr(image)).mean()
    assert stronger > diff.mean()


def test_resize_changes_size_without_resizing_back() -> None:
    image = _photo(96, 128)
    assert parse_attack("resize:0.5")(image).size == (64, 48)
    assert parse_attack("resize:0.25")(image).size == (32, 24)
    assert parse_attack("resize:1.5")(image).size == (192, 144)
    assert parse_attack("resize:0.001")(image).size == (1, 1)


def test_crop_keeps_area_fraction_at_centre() -> None:
    image = _photo(100, 200)
    out = parse_attack("crop:0.81")(image)
    assert out.size == (180, 90)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image)[5:95, 10:190])
    assert parse_attack("crop:1")(image).size == image.size


def test_noise_std_matches_sigma_and_is_seeded() -> None:
    image = Image.new("RGB", (200, 150), (128, 128, 128))
    attack = parse_attack("noise:0.04")
    out = attack(image, seed=7)
    delta = _arr(out) - _arr(image)
    assert abs(delta.std() - 0.04) < 0.002
    assert abs(delta.mean()) < 0.002
    np.testing.assert_array_equal(np.asarray(attack(image, seed=7)), np.asarray(out))
    assert not np.array_equal(np.asarray(attack(image, seed=8)), np.asarray(out))
    np.testing.assert_array_equal(np.asarray(parse_attack("noise:0")(image)), np.asarray(image))


def test_blur_smooths() -> None:
    image = _photo()
    out = parse_attack("blur:1")(image)
    assert out.size == image.size

    def roughness(a: np.ndarray) -> float:
        return float(np.abs(np.diff(a, axis=1)).mean())

    assert roughness(_arr(out)) < 0.7 * roughness(_arr(image))
    np.testing.assert_array_equal(np.asarray(parse_attack("blur:0")(image)), np.asarray(image))


def test_brightness_scales_mean() -> None:
    image = _photo()
    out = parse_attack("brightness:1.3")(image)
    assert _arr(out).mean() / _arr(image).mean() == pytest.approx(1.3, rel=0.01)


def test_contrast_scales_spread() -> None:
    image = _photo()
    gray = lambda im: _arr(im.convert("L"))  # noqa: E731
    out = parse_attack("contrast:1.3")(image)
    assert gray(out).std() / gray(image).std() == pytest.approx(1.3, rel=0.03)
    assert gray(out).mean() == pytest.approx(gray(image).mean(), abs=0.01)


def test_saturation_scales_chroma() -> None:
    image = _photo()
    out = parse_attack("saturation:0.5")(image)

    def chroma(a: np.ndarray) -> float:
        return float((a - a.mean(axis=-1, keepdims=True)).std())

    assert chroma(_arr(out)) / chroma(_arr(image)) == pytest.approx(0.5, rel=0.1)


def test_combo_chains_in_order() -> None:
    image = _photo(96, 128)
    combo = parse_attack("combo:jpeg:70+resize:0.75+brightness:1.2")
    assert combo.name == "combo:jpeg:70+resize:0.75+brightness:1.2"
    out = combo(image, seed=3)
    manual = image
    for spec in ("jpeg:70", "resize:0.75", "brightness:1.2"):
        manual = parse_attack(spec)(manual)
    assert out.size == (96, 72)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(manual))


def test_combo_noise_stages_get_distinct_deterministic_seeds() -> None:
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    combo = parse_attack("combo:noise:0.05+noise:0.05")
    first = np.asarray(combo(image, seed=1))
    np.testing.assert_array_equal(np.asarray(combo(image, seed=1)), first)
    delta = _arr(Image.fromarray(first)) - 128 / 255
    assert delta.std() == pytest.approx(0.05 * np.sqrt(2), rel=0.08)


def test_alpha_and_other_modes_are_dropped_to_rgb() -> None:
    rgba = Image.new("RGBA", (20, 10), (10, 20, 30, 0))
    for spec in ("none", "jpeg:90", "resize:0.5", "noise:0.01", "blur:1", "contrast:1.1"):
        assert parse_attack(spec)(rgba).mode == "RGB"
    assert parse_attack("none")(Image.new("L", (4, 4), 9)).getpixel((0, 0)) == (9, 9, 9)


def test_deterministic_for_all_defaults() -> None:
    image = _photo(48, 64)
    for attack in DEFAULT_SUITE:
        a = np.asarray(attack(image, seed=5))
        b = np.asarray(attack(image, seed=5))
        np.testing.assert_array_equal(a, b, err_msg=attack.name)


def test_input_image_is_not_modified() -> None:
    image = _photo()
    before = np.asarray(image).copy()
    for attack in DEFAULT_SUITE:
        attack(image, seed=0)
    np.testing.assert_array_equal(np.asarray(image), before)


def test_apply_array_roundtrip() -> None:
    rgb = _arr(_photo())
    out = parse_attack("resize:0.5").apply_array(rgb)
    assert out.dtype == np.float32 and out.shape == (48, 64, 3)
    np.testing.assert_allclose(parse_attack("none").apply_array(rgb), rgb, atol=1e-6)


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("jpeg:50", "jpeg:50"),
        (" JPEG : 050 ", "jpeg:50"),
        ("resize:0.50", "resize:0.5"),
        ("blur:1.0", "blur:1"),
        ("none", "none"),
        ("combo: jpeg:70 + resize:.75", "combo:jpeg:70+resize:0.75"),
    ],
)
def test_canonical_names(spec: str, canonical: str) -> None:
    assert parse_attack(spec).name == canonical
    assert parse_attack(canonical) == parse_attack(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "", "   ", "jpeg", "jpeg:", "jpeg:0", "jpeg:101", "jpeg:50.5", "jpeg:abc", "jpeg:50:1",
        "resize:0", "resize:-0.5", "resize:5", "resize:nan", "crop:0", "crop:1.5", "noise:-0.1",
        "noise:inf", "blur:-1", "brightness:0", "contrast:x", "saturation:", "rotate:90", "spin:10", "mirror:1",
        "combo", "combo:", "combo:jpeg:50+", "combo:+jpeg:50", "combo:combo:jpeg:50",
        "combo:jpeg:50+bogus:1", "none:1",
    ],
)
def test_bad_specs_raise_value_error(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_attack(spec)


def test_error_messages_are_specific() -> None:
    with pytest.raises(ValueError, match="unknown attack 'spin'"):
        parse_attack("spin:10")
    with pytest.raises(ValueError, match=r"outside \[1, 100\]"):
        parse_attack("jpeg:0")
    with pytest.raises(ValueError, match="needs a parameter"):
        parse_attack("noise")


def test_parse_suite() -> None:
    suite = parse_suite(" jpeg:50 , resize:0.5,combo:jpeg:70+blur:1 ")
    assert [a.name for a in suite] == ["jpeg:50", "resize:0.5", "combo:jpeg:70+blur:1"]
    assert parse_suite("") == () and parse_suite("  ") == ()
    with pytest.raises(ValueError, match="duplicate"):
        parse_suite("jpeg:50,jpeg:050")
    with pytest.raises(ValueError):
        parse_suite("jpeg:50,,resize:0.5")
    with pytest.raises(ValueError):
        parse_suite("jpeg:50,bogus")


def test_attack_is_frozen_and_registry_read_only() -> None:
    attack = parse_attack("jpeg:50")
    assert isinstance(attack, Attack)
    with pytest.raises(dataclasses.FrozenInstanceError):
        attack.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ATTACKS["x"] = ATTACKS["jpeg"]  # type: ignore[index]
    assert {"jpeg", "resize", "crop", "noise", "blur", "brightness", "contrast",
            "saturation"} <= set(ATTACKS)


def test_jpeg_attack_output_is_a_real_jpeg_roundtrip() -> None:
    image = _photo()
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=30)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(parse_attack("jpeg:30")(image)), expected)


def test_geometric_attacks_have_the_right_geometry():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8))
    crop = parse_attack("offcrop:0.64")
    assert crop(image, 3).size == (80, 64)
    assert np.array_equal(np.asarray(crop(image, 3)), np.asarray(crop(image, 3)))
    assert any(not np.array_equal(np.asarray(crop(image, 3)), np.asarray(crop(image, s))) for s in range(4, 9))
    shifted = parse_attack("shift:0.1")(image)
    assert np.array_equal(np.asarray(shifted), np.asarray(image)[8:, 10:])
    framed = np.asarray(parse_attack("margin:0.1")(image))
    assert framed.shape == (96, 120, 3) and framed[:8].max() == 0 and np.array_equal(framed[8:88, 10:110], np.asarray(image))
    assert parse_attack("rotate:2")(image).size == image.size
    assert np.array_equal(np.asarray(parse_attack("mirror")(image)), np.asarray(image)[:, ::-1])
