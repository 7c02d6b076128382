"""Tests for filigree.imaging (decoding, encoding, kernels, metrics, pixel memory): images are
generated on the fly."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

from imagefiles import encoded as _save, srgb_icc as _srgb_icc
from filigree.imaging import decode
from filigree.imaging.decode import ImageDecodeError, decode_image
from filigree.imaging.encode import encode_image
from filigree.imaging.kernels import add_residual, to_working_size, upsample_residual, working_view
from filigree.imaging.metrics import psnr, ssim
from filigree.imaging.pixels import pil_image, pixel_view, to_float_rgb

H, W = 24, 32


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _gradient(height: int = H, width: int = W) -> np.ndarray:
    """Smooth uint8 RGB content that compresses like a photo."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = x / max(1, width - 1)
    g = y / max(1, height - 1)
    b = 0.5 + 0.4 * np.sin(x / 5.0) * np.cos(y / 7.0)
    return np.rint(np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _noise(shape: tuple[int, ...], seed: int = 0, dtype=np.uint8) -> np.ndarray:
    return _rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def _roundtrip(data: bytes, **options) -> tuple[decode.DecodedImage, decode.DecodedImage]:
    first = decode_image(data)
    second = decode_image(encode_image(first, first.rgb, **options))
    return first, second


def _u8(rgb: np.ndarray) -> np.ndarray:
    return np.rint(rgb * 255).astype(np.uint8)


# ------------------------------------------------------------------------------- round trips

ALPHA = _noise((H, W), seed=1)
ALPHA[0, :4] = 0  # fully transparent pixels must keep their colour in lossless formats

LOSSLESS_CASES = {
    "L-png": (lambda: Image.fromarray(_noise((H, W))), "PNG", {}),
    "LA-png": (lambda: Image.fromarray(np.dstack([_noise((H, W)), ALPHA])), "PNG", {}),
    "P-png": (lambda: Image.fromarray(_noise((H, W, 3))).convert("P"), "PNG", {}),
    "P-trns-png": (
        lambda: Image.fromarray(_noise((H, W, 3))).convert("P"), "PNG", {"transparency": 3}
    ),
    "RGB-png": (lambda: Image.fromarray(_noise((H, W, 3))), "PNG", {}),
    "L-trns-png": (lambda: Image.fromarray(_noise((H, W))), "PNG", {"transparency": 7}),
    "RGB-trns-png": (
        lambda: Image.fromarray(_noise((H, W, 3)) // 32 * 32), "PNG", {"transparency": (32, 64, 96)}
    ),
    "RGBA-png": (lambda: Image.fromarray(np.dstack([_noise((H, W, 3)), ALPHA])), "PNG", {}),
    "I16-png": (lambda: Image.fromarray(_noise((H, W), dtype=np.uint16)), "PNG", {}),
    "I16-tiff": (lambda: Image.fromarray(_noise((H, W), dtype=np.uint16)), "TIFF", {}),
    "I16B-tiff": (
        lambda: Image.fromarray(_noise((H, W), dtype=np.uint16).astype(">u2")), "TIFF", {}
    ),
    "1-png": (lambda: Image.fromarray(_noise((H, W)) > 127), "PNG", {}),
    "1-tiff-g4": (lambda: Image.fromarray(_noise((H, W)) > 127), "TIFF", {"compression": "group4"}),
    "CMYK-tiff": (lambda: Image.fromarray(_noise((H, W, 3))).convert("CMYK"), "TIFF", {}),
    "RGB-bmp": (lambda: Image.fromarray(_noise((H, W, 3))), "BMP", {}),
    "L-bmp": (lambda: Image.fromarray(_noise((H, W))), "BMP", {}),
    "P-bmp": (lambda: Image.fromarray(_noise((H, W, 3))).convert("P"), "BMP", {}),
    "gif": (lambda: Image.fromarray(_noise((H, W, 3))).convert("P"), "GIF", {}),
    "gif-trns": (
        lambda: Image.fromarray(_noise((H, W, 3))).convert("P"), "GIF", {"transparency": 0}
    ),
    "RGB-tiff-lzw": (
        lambda: Image.fromarray(_noise((H, W, 3))), "TIFF", {"compression": "tiff_lzw"}
    ),
    "RGBA-tiff": (lambda: Image.fromarray(np.dstack([_noise((H, W, 3)), ALPHA])), "TIFF", {}),
    "LA-tiff": (lambda: Image.fromarray(np.dstack([_noise((H, W)), ALPHA])), "TIFF", {}),
    "RGBA-webp-lossless": (
        lambda: Image.fromarray(np.dstack([_noise((H, W, 3)), ALPHA])),
        "WEBP",
        {"lossless": True, "exact": True},
    ),
}

EXPECTED = {
    # case: (output format, output mode, grayscale, bit depth, has alpha)
    "L-png": ("PNG", "L", True, 8, False),
    "LA-png": ("PNG", "LA", True, 8, True),
    "P-png": ("PNG", "RGB", False, 8, False),
    "P-trns-png": ("PNG", "RGBA", False, 8, True),
    "RGB-png": ("PNG", "RGB", False, 8, False),
    "L-trns-png": ("PNG", "LA", True, 8, True),
    "RGB-trns-png": ("PNG", "RGBA", False, 8, True),
    "RGBA-png": ("PNG", "RGBA", False, 8, True),
    "I16-png": ("PNG", "I;16", True, 16, False),
    "I16-tiff": ("TIFF", "I;16", True, 16, False),
    "I16B-tiff": ("TIFF", "I;16", True, 16, False),
    "1-png": ("PNG", "L", True, 8, False),
    "1-tiff-g4": ("TIFF", "L", True, 8, False),
    "CMYK-tiff": ("TIFF", "RGB", False, 8, False),
    "RGB-bmp": ("BMP", "RGB", False, 8, False),
    "L-bmp": ("BMP", "L", True, 8, False),
    "P-bmp": ("BMP", "RGB", False, 8, False),
    "gif": ("PNG", "RGB", False, 8, False),
    "gif-trns": ("PNG", "RGBA", False, 8, True),
    "RGB-tiff-lzw": ("TIFF", "RGB", False, 8, False),
    "RGBA-tiff": ("TIFF", "RGBA", False, 8, True),
    "LA-tiff": ("TIFF", "LA", True, 8, True),
    "RGBA-webp-lossless": ("WEBP", "RGBA", False, 8, True),
}


@pytest.mark.parametrize("case", sorted(LOSSLESS_CASES))
def test_lossless_roundtrip_is_exact(case: str) -> None:
    make, fmt, options = LOSSLESS_CASES[case]
    source = make()
    first, second = _roundtrip(_save(source, fmt, **options))
    out_format, out_mode, gray, depth, has_alpha = EXPECTED[case]
    assert first.format == fmt
    assert first.mode == source.mode
    assert first.rgb.dtype == np.float32 and first.rgb.shape == (H, W, 3)
    assert 0.0 <= first.rgb.min() and first.rgb.max() <= 1.0
    assert (first.output_format, first.output_mode) == (out_format, out_mode)
    assert (first.grayscale, first.bit_depth, first.alpha is not None) == (gray, depth, has_alpha)
    assert second.format == out_format
    np.testing.assert_array_equal(second.rgb, first.rgb)
    if has_alpha:
        np.testing.assert_array_equal(second.alpha, first.alpha)
    else:
        assert second.alpha is None


def test_pixel_values_match_pillow() -> None:
    rgb = _noise((H, W, 3))
    alpha = ALPHA
    decoded = decode_image(_save(Image.fromarray(np.dstack([rgb, alpha])), "PNG"))
    np.testing.assert_array_equal(_u8(decoded.rgb), rgb)
    np.testing.assert_array_equal(decoded.alpha, alpha)
    assert decoded.alpha.dtype == np.uint8


def test_sixteen_bit_gray_scaled_by_65535_and_kept() -> None:
    values = _noise((H, W), dtype=np.uint16)
    values[0, 0], values[0, 1] = 0, 65535
    decoded = decode_image(_save(Image.fromarray(values), "PNG"))
    np.testing.assert_allclose(decoded.rgb[..., 0], values / 65535.0, rtol=0, atol=1e-7)
    assert np.array_equal(decoded.rgb[..., 0], decoded.rgb[..., 2])
    with Image.open(io.BytesIO(encode_image(decoded, decoded.rgb))) as out:
        assert out.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(out), values)


def test_int32_gray_is_treated_as_sixteen_bit() -> None:
    values = _noise((H, W), dtype=np.uint16).astype(np.int32)
    decoded = decode_image(_save(Image.fromarray(values), "TIFF"))
    assert decoded.mode == "I" and decoded.bit_depth == 16 and decoded.grayscale
    np.testing.assert_array_equal(np.rint(decoded.rgb[..., 0] * 65535), values)


def test_gray_output_is_luma_of_marked_rgb() -> None:
    gray = np.full((H, W), 100, np.uint8)
    decoded = decode_image(_save(Image.fromarray(gray), "PNG"))
    marked = decoded.rgb.copy()
    marked[..., 0] += 10 / 255  # only red changes: luma moves by 0.299 * 10 = 2.99
    with Image.open(io.BytesIO(encode_image(decoded, marked))) as out:
        assert out.mode == "L"
        assert np.all(np.asarray(out) == 103)


def test_sixteen_bit_colour_png_is_noted() -> None:
    height, width = 3, 4
    values = (np.arange(height * width * 3).reshape(height, width, 3) * 1000).astype(">u2")
    raw = b"".join(b"\x00" + values[row].tobytes() for row in range(height))
    data = _png_bytes(width, height, bit_depth=16, colour_type=2, idat=zlib.compress(raw))
    decoded = decode_image(data)
    assert decoded.bit_depth == 8 and "16bit_decoded_as_8bit" in decoded.notes
    np.testing.assert_array_equal(_u8(decoded.rgb), (values >> 8).astype(np.uint8))


def test_cmyk_with_mismatched_icc_falls_back_to_naive_conversion() -> None:
    image = Image.fromarray(_gradient()).convert("CMYK")
    decoded = decode_image(_save(image, "TIFF", icc_profile=_srgb_icc()))
    assert "cmyk_to_rgb_naive" in decoded.notes and decoded.icc_profile is None
    np.testing.assert_array_equal(_u8(decoded.rgb), np.asarray(image.convert("RGB")))


def test_png_transparency_chunk_becomes_alpha() -> None:
    gray = _noise((H, W))
    gray[0, 0] = 7
    decoded = decode_image(_save(Image.fromarray(gray), "PNG", transparency=7))
    np.testing.assert_array_equal(decoded.alpha, np.where(gray == 7, 0, 255))


def test_cmyk_jpeg_becomes_rgb_jpeg() -> None:
    rgb = _gradient()
    decoded = decode_image(_save(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
    assert decoded.mode == "CMYK" and decoded.format == "JPEG"
    assert "cmyk_to_rgb_naive" in decoded.notes and decoded.icc_profile is None
    assert psnr(_u8(decoded.rgb), rgb) > 30
    out = encode_image(decoded, decoded.rgb)
    with Image.open(io.BytesIO(out)) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")


@pytest.mark.parametrize("quality", [50, 75, 90])
def test_jpeg_quality_estimate_and_lossy_roundtrip(quality: int) -> None:
    rgb = _gradient(64, 80)
    first, second = _roundtrip(_save(Image.fromarray(rgb), "JPEG", quality=quality))
    assert first.format == "JPEG" and first.subsampling == "4:2:0"
    assert abs(first.quality - quality) <= 1
    assert second.format == "JPEG" and second.subsampling == "4:2:0"
    assert psnr(first.rgb, second.rgb) > 38


def test_jpeg_subsampling_is_kept_or_overridden() -> None:
    data = _save(Image.fromarray(_gradient()), "JPEG", quality=90, subsampling="4:4:4")
    first, second = _roundtrip(data)
    assert first.subsampling == second.subsampling == "4:4:4"
    _, third = _roundtrip(data, jpeg_subsampling="4:2:0")
    assert third.subsampling == "4:2:0"
    with pytest.raises(ValueError):
        encode_image(first, first.rgb, jpeg_subsampling="4:1:1")


def test_jpeg_quality_parameter_is_used() -> None:
    decoded = decode_image(_save(Image.fromarray(_gradient()), "JPEG", quality=95))
    assert decode_image(encode_image(decoded, decoded.rgb, jpeg_quality=60)).quality == 60
    with pytest.raises(ValueError):
        encode_image(decoded, decoded.rgb, jpeg_quality=0)


def test_gray_jpeg_stays_gray() -> None:
    first, second = _roundtrip(_save(Image.fromarray(_gradient()[..., 1]), "JPEG", quality=92))
    assert first.grayscale and second.grayscale and second.mode == "L"


def test_webp_lossy_stays_lossy_and_keeps_alpha_exactly() -> None:
    rgba = np.dstack([_gradient(), ALPHA])
    first, second = _roundtrip(_save(Image.fromarray(rgba), "WEBP", quality=80))
    assert first.lossless is False and second.lossless is False
    np.testing.assert_array_equal(second.alpha, ALPHA)
    assert psnr(first.rgb, second.rgb) > 30


def test_webp_lossless_flag() -> None:
    first, second = _roundtrip(_save(Image.fromarray(_gradient()), "WEBP", lossless=True))
    assert first.lossless is True and second.lossless is True
    np.testing.assert_array_equal(first.rgb, second.rgb)


def test_mpo_reads_first_frame_as_jpeg() -> None:
    frames = [Image.fromarray(_gradient()), Image.fromarray(255 - _gradient())]
    data = _save(frames[0], "MPO", save_all=True, append_images=frames[1:])
    decoded = decode_image(data)
    assert decoded.format == decoded.output_format == "JPEG"
    assert "mpo_first_frame" in decoded.notes
    assert psnr(_u8(decoded.rgb), _gradient()) > 30


def test_one_by_one() -> None:
    data = _save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")
    first, second = _roundtrip(data)
    np.testing.assert_array_equal(_u8(first.rgb), [[[10, 20, 30]]])
    np.testing.assert_array_equal(second.rgb, first.rgb)
    assert decode_image(_save(Image.new("L", (1, 1), 7), "JPEG")).rgb.shape == (1, 1, 3)


def test_arrays_are_read_only() -> None:
    decoded = decode_image(_save(Image.fromarray(np.dstack([_gradient(), ALPHA])), "PNG"))
    with pytest.raises(ValueError):
        decoded.rgb[0, 0, 0] = 0
    with pytest.raises(ValueError):
        decoded.alpha[0, 0] = 0


def test_encode_rejects_bad_input() -> None:
    decoded = decode_image(_save(Image.fromarray(_gradient()), "PNG"))
    with pytest.raises(ValueError):
        encode_image(decoded, decoded.rgb[:-1])
    bad = decoded.rgb.copy()
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError):
        encode_image(decoded, bad)
    gray = decode_image(_save(Image.fromarray(_gradient()[..., 0]), "PNG"))
    with pytest.raises(ValueError):
        encode_image(gray, bad)


def test_encode_clips_and_rounds_to_nearest() -> None:
    decoded = decode_image(_save(Image.new("RGB", (4, 1)), "PNG"))
    rgb = np.array([[[-0.5, 1.5, 0.5 / 255], [0.49 / 255, 1.51 / 255, 254.6 / 255],
                     [-np.inf, np.inf, 1.0], [0.0, 0.0, 0.0]]])
    with Image.open(io.BytesIO(encode_image(decoded, rgb.astype(np.float32)))) as out:
        np.testing.assert_array_equal(np.asarray(out)[0, 0], [0, 255, 0])  # rint(0.5) == 0
        np.testing.assert_array_equal(np.asarray(out)[0, 1], [0, 2, 255])
        np.testing.assert_array_equal(np.asarray(out)[0, 2], [0, 255, 255])


# ------------------------------------------------------------------------------- metadata


def test_icc_profile_preserved() -> None:
    icc = _srgb_icc()
    for fmt, options in (("PNG", {}), ("JPEG", {"quality": 90}), ("WEBP", {"lossless": True}),
                         ("TIFF", {})):
        data = _save(Image.fromarray(_gradient()), fmt, icc_profile=icc, **options)
        first, second = _roundtrip(data)
        assert first.icc_profile == icc, fmt
        assert second.icc_profile == icc, fmt


def _oriented(fmt: str, orientation: int, **options) -> tuple[bytes, np.ndarray]:
    rgb = _noise((H, W, 3), seed=3)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    exif[0x010F] = "FiligreeCam"
    data = _save(image, fmt, exif=exif, **options)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    return data, expected


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied_and_reset(fmt: str, orientation: int) -> None:
    options = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    data, expected = _oriented(fmt, orientation, **options)
    decoded = decode_image(data)
    assert decoded.rgb.shape == expected.shape
    if orientation in (6, 8):
        assert decoded.rgb.shape[:2] == (W, H)
    np.testing.assert_array_equal(_u8(decoded.rgb), expected)
    exif = Image.Exif()
    exif.load(decoded.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "FiligreeCam"
    assert decoded.exif.startswith(b"Exif\x00\x00")
    again = decode_image(encode_image(decoded, decoded.rgb))
    assert again.rgb.shape == decoded.rgb.shape
    written = Image.Exif()
    written.load(again.exif)
    assert written[0x0112] == 1 and written[0x010F] == "FiligreeCam"


def test_untouched_exif_bytes_are_kept_verbatim() -> None:
    image = Image.fromarray(_gradient())
    exif = image.getexif()
    exif[0x010F] = "FiligreeCam"
    raw = exif.tobytes()
    first, second = _roundtrip(_save(image, "JPEG", exif=raw, quality=90))
    assert first.exif == raw and second.exif == raw


def test_xmp_text_comment_and_dpi_preserved() -> None:
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>'
    image = Image.fromarray(_gradient())
    first, second = _roundtrip(_save(image, "JPEG", xmp=xmp, comment=b"hello", dpi=(300, 300)))
    assert first.xmp == second.xmp == xmp
    assert first.comment == second.comment == b"hello"
    assert second.dpi == pytest.approx((300, 300))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "seed 1")
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    first, second = _roundtrip(_save(image, "PNG", pnginfo=info, dpi=(72, 72)))
    assert first.xmp == second.xmp == xmp
    assert ("parameters", "seed 1") in second.text
    assert second.dpi == pytest.approx((72, 72), abs=0.01)


# ------------------------------------------------------------------------------- bad inputs


def _png_bytes(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2,
               idat: bytes = b"") -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = idat or zlib.compress(b"\x00" * 16)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize("size", [(100_000, 100_000), (12_000, 10_000), (65_535, 1_600)])
def test_bomb_header_refused_before_decoding(size: tuple[int, int], monkeypatch) -> None:
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("loaded"))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageDecodeError) as info:
            decode_image(_png_bytes(*size))
    assert info.value.code == "too_large"
    assert time.perf_counter() - start < 0.5


def test_real_image_over_max_pixels_refused_without_loading(monkeypatch) -> None:
    data = _save(Image.new("RGB", (2000, 1000)), "PNG")  # 2 MP, compresses to a few KB
    assert len(data) < 20_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("loaded"))
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, max_pixels=1_000_000)
    assert info.value.code == "too_large" and "2000x1000" in str(info.value)


def test_max_pixels_boundary() -> None:
    data = _save(Image.new("RGB", (10, 10)), "PNG")
    assert decode_image(data, max_pixels=100).rgb.shape == (10, 10, 3)
    with pytest.raises(ImageDecodeError):
        decode_image(data, max_pixels=99)


def test_error_is_value_error_with_code() -> None:
    with pytest.raises(ValueError) as info:
        decode_image(b"")
    assert isinstance(info.value, ImageDecodeError)
    assert info.value.code == "empty" and info.value.code in decode.ERROR_CODES


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
@pytest.mark.parametrize("keep", [0.3, 0.8])
def test_truncated_files_raise(fmt: str, keep: float) -> None:
    data = _save(Image.fromarray(_noise((60, 80, 3))), fmt)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data[: int(len(data) * keep)])
    assert info.value.code == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "data",
    [b"hello world, not an image", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a",
     bytes(range(256)) * 4],
)
def test_garbage_bytes(data: bytes) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.code == "not_an_image"


def test_corrupt_png_data() -> None:
    data = _png_bytes(8, 8, idat=b"definitely not zlib data")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.code in ("corrupt", "truncated")


def test_unsupported_format() -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_save(Image.fromarray(_gradient()), "PPM"))
    assert info.value.code == "unsupported"


def test_format_detected_by_content(tmp_path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(_save(Image.fromarray(_gradient()), "PNG"))
    decoded = decode_image(path.read_bytes())
    assert decoded.format == "PNG"
    assert _save(Image.new("RGB", (1, 1)), "PNG")[:4] == encode_image(decoded, decoded.rgb)[:4]


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_multi_frame_refused(fmt: str) -> None:
    frames = [Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(3)]
    data = _save(frames[0], fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.code == "animated"


def test_single_frame_gif_accepted() -> None:
    decoded = decode_image(_save(Image.fromarray(_gradient()).convert("P"), "GIF"))
    assert decoded.format == "GIF" and decoded.output_format == "PNG"
    assert decoded.output_extension == ".png"


# ------------------------------------------------------------------------------- resizing


def test_to_working_size_shapes_and_values() -> None:
    rgb = np.full((300, 400, 3), 0.5, np.float32)
    small = to_working_size(rgb, 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.float32
    np.testing.assert_allclose(small, 128 / 255, atol=1e-6)
    tiny = to_working_size(np.full((5, 7, 3), 0.25, np.float32), 64)
    assert tiny.shape == (64, 64, 3)
    np.testing.assert_allclose(tiny, 64 / 255, atol=1e-6)
    uint8 = to_working_size(np.full((50, 50, 3), 200, np.uint8), 16)
    np.testing.assert_allclose(uint8, 200 / 255, atol=1e-6)


def test_to_working_size_is_area_average() -> None:
    rgb = np.zeros((8, 8, 3), np.float32)
    rgb[::2, ::2] = 1.0  # one in four pixels lit
    np.testing.assert_allclose(to_working_size(rgb, 4), 64 / 255, atol=1 / 255)


def test_to_working_size_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        to_working_size(np.zeros((8, 8), np.float32), 4)
    with pytest.raises(ValueError):
        to_working_size(np.zeros((8, 8, 3), np.float32), 0)


def _pillow_bilinear(residual: np.ndarray, height: int, width: int) -> np.ndarray:
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(residual[..., c]), "F").resize(
            (width, height), Image.BILINEAR))
        for c in range(residual.shape[2])
    ]
    return np.stack(planes, -1)


def _reference_bilinear(residual: np.ndarray, height: int, width: int) -> np.ndarray:
    """Half-pixel-centre bilinear with edge clamping, written out in float64."""
    def coords(n_in: int, n_out: int):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(pos).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, pos - low

    y0, y1, wy = coords(residual.shape[0], height)
    x0, x1, wx = coords(residual.shape[1], width)
    r = residual.astype(np.float64)
    top = r[y0][:, x0] * (1 - wx)[None, :, None] + r[y0][:, x1] * wx[None, :, None]
    bottom = r[y1][:, x0] * (1 - wx)[None, :, None] + r[y1][:, x1] * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(97, 131), (64, 64), (300, 257), (33, 1000), (16, 16)])
def test_upsample_residual_matches_bilinear(channels: int, size: tuple[int, int]) -> None:
    residual = _rng(5).normal(0, 1, (16, 16, channels)).astype(np.float32)
    out = upsample_residual(residual, *size)
    assert out.shape == (*size, channels) and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference_bilinear(residual, *size), atol=2e-6)
    np.testing.assert_allclose(out, _pillow_bilinear(residual, *size), atol=2e-6)


@pytest.mark.parametrize("size", [(1, 1), (8, 40), (5, 7)])
def test_upsample_residual_downscale_uses_pillow(size: tuple[int, int]) -> None:
    residual = _rng(6).normal(0, 1, (16, 16, 3)).astype(np.float32)
    out = upsample_residual(residual, *size)
    np.testing.assert_allclose(out, _pillow_bilinear(residual, *size), atol=1e-6)


def test_upsample_constant_stays_constant() -> None:
    out = upsample_residual(np.full((4, 4, 1), 0.25, np.float32), 50, 70)
    np.testing.assert_allclose(out, 0.25, atol=1e-7)


# ------------------------------------------------------------------------------- metrics


def test_psnr() -> None:
    a = _noise((H, W, 3))
    assert psnr(a, a) == float("inf")
    b = a.astype(np.int16)
    b[0, 0, 0] = b[0, 0, 0] + 10 if b[0, 0, 0] < 200 else b[0, 0, 0] - 10
    expected = 10 * np.log10(255**2 / (100 / a.size))
    assert psnr(a, b.astype(np.uint8)) == pytest.approx(expected, rel=1e-6)
    assert psnr(a / np.float32(255), b.astype(np.uint8) / np.float32(255)) == pytest.approx(
        expected, rel=1e-4)
    with pytest.raises(ValueError):
        psnr(a, a[:-1])
    with pytest.raises(ValueError):
        psnr(a, a.astype(np.float32))


def test_ssim() -> None:
    a = _gradient(40, 40).astype(np.float32) / 255
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + _rng(2).normal(0, 0.1, a.shape).astype(np.float32), 0, 1)
    assert 0 < ssim(a, noisy) < 0.9


# ------------------------------------------------------------------------------- native pixels


def _arrow_views() -> bool:
    return pixel_view(Image.new("RGB", (2, 2))) is not None


def test_decoded_pixels_are_native_read_only_views() -> None:
    rgb = _noise((H, W, 3))
    decoded = decode_image(_save(Image.fromarray(rgb), "PNG"))
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (H, W, 3)
    assert decoded.maxval == 255 and not decoded.pixels.flags.writeable
    np.testing.assert_array_equal(decoded.pixels, rgb)
    np.testing.assert_array_equal(decoded.rgb, rgb / np.float32(255))
    if _arrow_views():  # a view of Pillow's 4-byte pixels, not a copy
        assert decoded.pixels.strides == (W * 4, 4, 1)
    grey = decode_image(_save(Image.fromarray(rgb[..., 0]), "PNG"))
    assert grey.pixels.shape == (H, W) and grey.pixels.dtype == np.uint8
    sixteen = decode_image(_save(Image.fromarray(_noise((H, W), dtype=np.uint16)), "PNG"))
    assert sixteen.pixels.dtype == np.uint16 and sixteen.maxval == 65535


@pytest.mark.parametrize("case", ["RGBA-png", "I16-png", "L-png", "LA-png", "RGB-tiff-lzw", "P-png"])
def test_integer_pixels_are_encoded_as_they_are(case: str) -> None:
    make, fmt, options = LOSSLESS_CASES[case]
    first = decode_image(_save(make(), fmt, **options))
    second = decode_image(encode_image(first, first.pixels))
    np.testing.assert_array_equal(second.pixels, first.pixels)
    if first.alpha is not None:
        np.testing.assert_array_equal(second.alpha, first.alpha)
    with pytest.raises(ValueError):
        encode_image(first, first.pixels[:-1])


def test_pil_image_shares_memory_and_psnr_fast_path_agrees() -> None:
    first = decode_image(_save(Image.fromarray(_gradient(64, 80)), "JPEG", quality=80))
    second = decode_image(encode_image(first, first.pixels, jpeg_quality=60))
    np.testing.assert_array_equal(np.asarray(pil_image(first.pixels)), first.pixels)
    packed = [np.ascontiguousarray(d.pixels) for d in (first, second)]
    assert psnr(first.pixels, second.pixels) == pytest.approx(psnr(*packed), rel=1e-6)


def _native_cases() -> dict[str, np.ndarray]:
    rgb = _noise((61, 83, 3), seed=4)
    viewed = decode_image(_save(Image.fromarray(rgb), "PNG")).pixels
    return {"rgb-view": viewed, "rgb-packed": rgb, "grey": _noise((61, 83), seed=5),
            "grey16": _noise((61, 83), seed=6, dtype=np.uint16)}


@pytest.mark.parametrize("kind", ["rgb-view", "rgb-packed", "grey", "grey16"])
def test_working_view_equals_the_float_path(kind: str) -> None:
    pixels = _native_cases()[kind]
    np.testing.assert_array_equal(working_view(pixels, 16),
                                  to_working_size(to_float_rgb(pixels), 16))


def _reference_mark(pixels: np.ndarray, residual: np.ndarray, scale: float) -> np.ndarray:
    if pixels.ndim == 2 and residual.shape[2] == 3:
        residual = (residual.astype(np.float64) @ [0.299, 0.587, 0.114])[..., None]
    up = _reference_bilinear(residual, *pixels.shape[:2]) * scale
    delta = np.floor(up + 0.5).astype(np.int64)
    maxval = 65535 if pixels.dtype == np.uint16 else 255
    delta = delta[..., 0] if pixels.ndim == 2 else delta
    return np.clip(pixels.astype(np.int64) + delta, 0, maxval)


@pytest.mark.parametrize("kind", ["rgb-view", "rgb-packed", "grey", "grey16"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("amplitude", [0.02, 0.9])  # 8-bit tiles, and deltas beyond ±127
def test_add_residual_matches_reference(kind: str, channels: int, amplitude: float) -> None:
    pixels = _native_cases()[kind]
    before = pixels.copy()
    residual = _rng(7).normal(0, amplitude, (16, 16, channels)).astype(np.float32)
    scale = 1.5 * (65535 if pixels.dtype == np.uint16 else 255)
    marked = add_residual(pixels, residual, scale)
    assert marked.shape == pixels.shape and marked.dtype == pixels.dtype
    np.testing.assert_array_equal(pixels, before)
    diff = np.abs(marked.astype(np.int64) - _reference_mark(pixels, residual, scale))
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.002  # float rounding at .5 ties only
    if kind == "rgb-view" and _arrow_views():
        assert marked.strides[1:] == (4, 1)  # ready for pil_image without a copy


def test_add_residual_rounds_half_up_and_saturates() -> None:
    grey = np.array([[0, 3, 10, 250, 255]], np.uint8)
    up = np.full((4, 4, 1), 5.2 / 255, np.float32)
    np.testing.assert_array_equal(add_residual(grey, up, 255.0), [[5, 8, 15, 255, 255]])
    np.testing.assert_array_equal(add_residual(grey, -up, 255.0), [[0, 0, 5, 245, 250]])
    colour = np.dstack([grey, grey[:, ::-1], grey])
    np.testing.assert_array_equal(add_residual(colour, up, 255.0)[..., 1], [[255, 255, 15, 8, 5]])
    half = np.full((4, 4, 1), 0.5, np.float32)  # exactly 2.5 levels at scale 5: rounds up to 3
    np.testing.assert_array_equal(add_residual(grey, half, 5.0), [[3, 6, 13, 253, 255]])
    with pytest.raises(ValueError):
        add_residual(grey.astype(np.float32), up, 255.0)
    with pytest.raises(ValueError):
        add_residual(grey, np.full((4, 4, 1), np.nan, np.float32), 255.0)
