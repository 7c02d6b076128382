"""`Watermarker`: embed payloads into images and read them back, at native resolution.

    from filigree import Watermarker
    wm = Watermarker.load()                     # the bundled model, the default key
    marked = wm.embed(image, "0123456789abc")   # PIL image in, PIL image out (same size)
    result = wm.extract(marked)                 # result.payload, .detected, .p_value, .ber

The residual trick: the image is resized to the model's working size, the embedder predicts a
residual there, and only the residual is upsampled to the image's own size and added. The
full-resolution work (upsampling, adding, rounding, clipping) runs on the image's own 8- or
16-bit pixels in small row tiles (`kernels.add_residual`), reading Pillow's memory and writing
the returned image's memory without intermediate copies: a marked pixel is
`clip(pixel + floor(strength * maxval * upsampled_residual + 0.5))`. The Beam pipeline uses the
same functions, with batched inference.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from filigree.bundle import LoadedBundle, load_bundle
from filigree.imaging.kernels import add_residual, resize_to, to_working_size, upsample_residual, working_view
from filigree.imaging.pixels import LUMA, pil_image, pixel_view, raise_block_size
from filigree.detection import better_read
from filigree.payload import PayloadCodec, ReadResult
from filigree.periodic import PeriodicMarker, SaltedCodec, codec_for_card, eight_bit_scale
from filigree.reframe import SearchConfig, centred_framings, framed_tile_views, framed_views, framings
from filigree.tiling import decode_grid, decode_tiles, grid_logits, read_views, tile_views, tiled_residual

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def mark_pixels(pixels: np.ndarray, residual: np.ndarray, strength: float) -> np.ndarray:
    """Marked copy of native pixels (uint8 RGB ``[H, W, 3]``, uint8 or uint16 grey
    ``[H, W]``): ``clip(p + floor(strength * maxval * up(residual) + 0.5))``."""
    maxval = 65535 if pixels.dtype == np.uint16 else 255
    return add_residual(pixels, residual, float(strength) * maxval)


def apply_residual(rgb: np.ndarray, residual: np.ndarray, strength: float) -> np.ndarray:
    """Marked float32 RGB in [0, 1]: `rgb + strength * upsampled(residual)`, clipped.

    `residual` is the embedder's [S, S, C] output (C = 1 adds the same value to R, G and B).
    Float reference version of `mark_pixels` (full-size float arrays: for small images)."""
    height, width = rgb.shape[:2]
    upsampled = upsample_residual(residual, height, width)
    if strength != 1.0:
        upsampled *= np.float32(strength)
    marked = np.add(rgb, upsampled, dtype=np.float32)
    np.clip(marked, 0.0, 1.0, out=marked)
    return marked


# -- PIL images <-> pixels ---------------------------------------------------------------------

def image_pixels(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(native pixels, alpha uint8 [H, W] or None, output mode) of any PIL image.

    Pixels are uint8 RGB ``[H, W, 3]`` (a read-only view of Pillow's memory for RGB/RGBA
    images), uint8 grey ``[H, W]`` for ``L``/``LA``/``1``, uint16 grey for 16/32-bit grey.
    The output mode keeps the family: grey stays grey (8 or 16 bit), alpha is kept; palette,
    CMYK and other modes become RGB or RGBA (re-quantising a palette would destroy the mark)."""
    mode = image.mode
    image.load()
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image)
        if mode == "I":
            values = np.clip(values, 0, 65535)
        return values.astype(np.uint16), None, "I;16"
    if mode in ("L", "1"):
        grey = image if mode == "L" else image.convert("L")
        return _grey_plane(grey), None, "L"
    if mode == "LA":
        return _grey_plane(image.getchannel("L")), _grey_plane(image.getchannel("A")).copy(), "LA"
    if mode in ("RGBA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        view = _rgbx_view(rgba)
        return view[..., :3], np.ascontiguousarray(view[..., 3]), "RGBA"
    rgb = image if mode == "RGB" else image.convert("RGB")
    return _rgbx_view(rgb)[..., :3], None, "RGB"


def _grey_plane(image: Image.Image) -> np.ndarray:
    view = pixel_view(image)
    return view if view is not None else np.asarray(image)


def _rgbx_view(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 4] over Pillow's memory; an image held in several blocks is copied once
    into a single block first."""
    view = pixel_view(image)
    if view is None:
        width, height = image.size
        raise_block_size(width * height * 4)
        view = pixel_view(image.copy())
    if view is None:  # no Arrow support: pad a copy to the same layout
        values = np.asarray(image.convert("RGBA"))
        view = values
    return view


def pixels_to_image(pixels: np.ndarray, alpha: np.ndarray | None, mode: str) -> Image.Image:
    """A PIL image in `mode` ("RGB", "RGBA", "L", "LA", "I;16") of native pixels (shared
    memory for RGB where the layout allows) and an optional alpha."""
    image = pil_image(pixels)
    if mode in ("RGBA", "LA"):
        image = image.convert(mode)
        if alpha is not None:
            image.putalpha(Image.fromarray(np.ascontiguousarray(alpha), "L"))
    return image


def pil_to_rgb(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(float32 RGB [H, W, 3] in [0, 1], alpha uint8 [H, W] or None) of any PIL image."""
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(values, 0, 1)[..., None], 3, axis=2), None
    alpha = None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].copy()
        image = rgba
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, alpha


def rgb_to_pil(rgb: np.ndarray, alpha: np.ndarray | None, like_mode: str) -> Image.Image:
    """A PIL image in `like_mode`'s family: grey stays grey (8 or 16 bit), alpha is re-attached;
    palette, CMYK and other modes come back as RGB or RGBA (re-quantising a palette would
    destroy the mark)."""
    if like_mode in _SIXTEEN_BIT:
        grey = np.rint(np.clip(rgb @ LUMA, 0, 1) * 65535.0).astype(np.uint16)
        return Image.fromarray(grey)
    if like_mode in ("L", "LA", "1"):
        grey = Image.fromarray(np.rint(np.clip(rgb @ LUMA, 0, 1) * 255.0).astype(np.uint8), "L")
        if alpha is not None:
            grey.putalpha(Image.fromarray(alpha, "L"))
        return grey
    out = Image.fromarray(np.rint(np.clip(rgb, 0, 1) * 255.0).astype(np.uint8), "RGB")
    if alpha is not None:
        out.putalpha(Image.fromarray(alpha, "L"))
    return out


_SEARCH_BATCH = 256
"""Framings read per extractor call in a re-framing search."""


def search_config(reframe: SearchConfig | bool | None) -> SearchConfig | None:
    """The search a `reframe` argument asks for: None/False none, True the default one."""
    if reframe is None or reframe is False:
        return None
    if reframe is True:
        return SearchConfig()
    if isinstance(reframe, SearchConfig):
        return reframe
    raise TypeError(f"reframe must be a bool, a SearchConfig or None, not {type(reframe).__name__}")


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    return float(value)


def _positive(name: str, value) -> float:
    value = _number(name, value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _fpr(value) -> float:
    value = _number("fpr", value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"fpr must be in (0, 1], got {value}")
    return value


class Watermarker:
    """A loaded model bundle plus a payload codec (error correction and key). A periodic
    bundle (card `layout`) embeds and reads through `filigree.periodic.PeriodicMarker`: its
    reads re-synchronise after crops, shifts, margins, rotations, mirrors and rescaling."""

    def __init__(self, bundle: LoadedBundle, codec: PayloadCodec | SaltedCodec, strength: float | None = None,
                 fpr: float = 1e-6, max_grid: int | None = None):
        self.bundle = bundle
        self.codec = codec
        self.strength = bundle.card.default_strength if strength is None else _positive("strength", strength)
        self.fpr = _fpr(fpr)
        """Target false-positive rate of `ReadResult.detected`, in (0, 1]."""
        self.tiling = bundle.card.tiling
        if max_grid is not None and (isinstance(max_grid, bool) or not isinstance(max_grid, (int, np.integer))):
            raise TypeError(f"max_grid must be an int or None, not {type(max_grid).__name__}")
        if max_grid is not None and max_grid < 1:
            raise ValueError(f"max_grid must be >= 1, got {max_grid}")
        self.max_grid = max_grid
        """Mark on at most this many tiles a side (None: the card's); reads are unaffected."""
        self.periodic = None
        if bundle.card.layout is not None:
            if not isinstance(codec, SaltedCodec):
                raise TypeError("a periodic bundle needs a SaltedCodec (see codec_for_card)")
            self.periodic = PeriodicMarker(bundle.embed_fn, bundle.extract_fn, codec, self.strength, self.fpr)

    @classmethod
    def load(cls, model_dir: str | None = None, key: bytes | str | None = None, *,
             strength: float | None = None, fpr: float = 1e-6,
             max_grid: int | None = None) -> "Watermarker":
        """Load a bundle with an optional key. `model_dir`: a bundle directory, or the name of a
        bundled model (`filigree.resources.BUNDLED_MODELS`: "default", "periodic"); None is the
        default bundled model. Raises ValueError for a bare name that is neither."""
        from filigree.resources import model_dir_of
        bundle = load_bundle(model_dir_of(model_dir))
        return cls(bundle, codec_for_card(bundle.card, key), strength, fpr, max_grid)

    @property
    def working_size(self) -> int:
        return self.bundle.card.working_size

    @property
    def data_bits(self) -> int:
        return self.codec.data_bits

    # -- batched model calls ---------------------------------------------------------------
    def residuals(self, views: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Embedder on a batch: views [N, S, S, 3], raw bits [N, L] -> residuals [N, S, S, C]."""
        return self.bundle.embed_fn(views, bits)

    def logits(self, views: np.ndarray) -> np.ndarray:
        """Extractor on a batch: views [N, S, S, 3] -> logits [N, L]."""
        return self.bundle.extract_fn(views)

    # -- one image, as arrays --------------------------------------------------------------
    def residual(self, pixels: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """The residual [g*S, g*S, C] of an image (native pixels or float RGB) for raw bits [L]:
        one embedder call per tile of the image's grid, laid out as the grid and amplified by
        its gain (see `filigree.tiling`)."""
        height, width = pixels.shape[:2]
        views = tile_views(pixels, self.tiling.grid_for(height, width, self.max_grid), self.working_size)
        return tiled_residual(self.residuals(views, np.repeat(bits[None], len(views), axis=0)), self.tiling)

    def embed_pixels(self, pixels: np.ndarray, payload: str | int) -> np.ndarray:
        """Marked copy of native pixels (uint8 RGB [H, W, 3], uint8/uint16 grey [H, W])."""
        if self.periodic is not None:
            residual = self.periodic.residual(pixels, payload)[..., None]
            return add_residual(pixels, residual, 257.0 if pixels.dtype == np.uint16 else 1.0)
        return mark_pixels(pixels, self.residual(pixels, self.codec.encode(payload)), self.strength)

    def embed_rgb(self, rgb: np.ndarray, payload: str | int) -> np.ndarray:
        """Marked float32 RGB of the same shape (float reference path)."""
        if self.periodic is not None:
            residual = self.periodic.residual(np.asarray(rgb, np.float32) * np.float32(255.0), payload)
            return np.clip(rgb + residual[..., None] / np.float32(255.0), 0.0, 1.0).astype(np.float32)
        return apply_residual(rgb, self.residual(rgb, self.codec.encode(payload)), self.strength)

    def read_logits(self, pixels: np.ndarray) -> np.ndarray:
        """The extractor's logits for every tile of every grid a reader tries (`read_views`)."""
        return self.logits(read_views(pixels, self.tiling, self.working_size))

    def extract_rgb(self, rgb: np.ndarray, expected: str | int | None = None) -> ReadResult:
        """Read the payload from float RGB, uint8 RGB or native grey pixels."""
        return self.read_pixels(rgb, expected)

    def read_pixels(self, pixels: np.ndarray, expected: str | int | None = None) -> ReadResult:
        """The straight read of native pixels or float RGB. A periodic bundle re-synchronises
        (`PeriodicMarker.read_pixels`). A tiled bundle first reads the one
        grid the image would be marked with at its present size (enough for an image that was
        not resized) and reads every grid only when that finds nothing; the p-value pays for
        every grid either way (Bonferroni), so stopping early keeps the false-positive rate."""
        if self.periodic is not None:
            return self.periodic.read_pixels(eight_bit_scale(pixels), expected)
        if self.tiling.max_grid > 1:
            grid = self.tiling.grid_for(*pixels.shape[:2])
            logits = self.logits(tile_views(pixels, grid, self.working_size))
            read = decode_grid(self.codec, logits, grid, self.tiling, expected, self.fpr)
            if read.detected:
                return read
        return decode_tiles(self.codec, self.read_logits(pixels), self.tiling, expected, self.fpr)

    # -- one PIL image ---------------------------------------------------------------------
    def embed(self, image: Image.Image, payload: str | int) -> Image.Image:
        """The image with `payload` embedded: same size; grey stays grey, alpha is kept."""
        pixels, alpha, mode = image_pixels(image)
        return pixels_to_image(self.embed_pixels(pixels, payload), alpha, mode)

    def extract(self, image: Image.Image, expected: str | int | None = None,
                reframe: SearchConfig | bool | None = None) -> ReadResult:
        """Read a PIL image: `payload`/`decoded`, `detected`, `p_value` at this Watermarker's
        `fpr`, and `ber`/`match` against `expected` when given (`ReadResult` says what each
        promises). `reframe` (True, or a `SearchConfig`; None/False: off): a read that is not
        conclusive (detected with its payload decoded) searches for a crop of the marked frame
        (see `filigree.reframe`); a periodic bundle's read already searches every lattice, and
        its deeper search reads windows of the image for a marked piece of it
        (`PeriodicMarker.search`; the `SearchConfig` does not apply).
        Raises TypeError for a non-image or a bad `reframe`, `PayloadError` (a ValueError) for an
        expected payload that does not fit."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL.Image.Image, not {type(image).__name__}")
        config = search_config(reframe)
        if self.periodic is not None:
            pixels = eight_bit_scale(image_pixels(image)[0])
            straight = self.periodic.read_pixels(pixels, expected, searching=config is not None)
            if config is None or straight.conclusive:
                return straight
            return self.periodic.search(pixels, straight, expected)
        if self.tiling.max_grid == 1:
            straight = self.codec.decode(self.logits(self.view(image)[None])[0], expected=expected, fpr=self.fpr)
        else:
            straight = self.read_pixels(image_pixels(image)[0], expected)
        if config is None or straight.conclusive:
            return straight
        return self.search(image, straight, expected, config)

    def search(self, image: Image.Image, straight: ReadResult, expected: str | int | None,
               config: SearchConfig) -> ReadResult:
        """The re-framing search after a straight read that is not conclusive: the best framing
        when it is detected and adds to the straight read (its p-value counts the straight
        read's hypotheses too), else the straight read. A tiled bundle searches centred crops
        only (see `filigree.reframe`)."""
        if self.tiling.max_grid > 1:
            return better_read(straight, self._search_tiles(image, straight, expected, config))
        candidates = framings(config)
        views = framed_views(image, candidates, self.working_size)
        logits = np.concatenate([self.logits(views[i:i + _SEARCH_BATCH])
                                 for i in range(0, len(views), _SEARCH_BATCH)])
        best, read = self.codec.decode_best(logits, expected=expected, fpr=self.fpr,
                                            tried=len(candidates) + 1)
        if not read.detected:
            return straight
        return better_read(straight, dataclasses.replace(read, framing=candidates[best].to_dict()))

    def _search_tiles(self, image: Image.Image, straight: ReadResult, expected: str | int | None,
                      config: SearchConfig) -> ReadResult:
        """The centred search of a tiled bundle: every grid of every centred framing is one
        hypothesis; the straight read's grids count as tried too."""
        candidates = centred_framings(config)
        grids = self.tiling.read_grids
        per_grid = []
        step = max(1, _SEARCH_BATCH // self.tiling.read_views)
        for start in range(0, len(candidates), step):
            chunk = candidates[start:start + step]
            logits = self.logits(framed_tile_views(image, chunk, self.tiling, self.working_size))
            per_grid.extend(grid_logits(part, self.tiling) for part in np.split(logits, len(chunk)))
        if not per_grid:
            return straight
        best, read = self.codec.decode_best(np.concatenate(per_grid), expected=expected, fpr=self.fpr,
                                            tried=len(candidates) * len(grids) + len(grids))
        if not read.detected:
            return straight
        return dataclasses.replace(read, framing=candidates[best // len(grids)].to_dict(),
                                   grid=grids[best % len(grids)])

    def view(self, image: Image.Image) -> np.ndarray:
        """float32 [S, S, 3]: the image at the working size, as the models see it (straight
        from Pillow's memory for RGB and L images; equal to `working_view` of its pixels)."""
        size = self.working_size
        if image.mode in ("RGB", "L"):
            small = np.asarray(resize_to(image, size))
            if image.mode == "L":
                small = np.repeat(small[..., None], 3, axis=2)
            return np.divide(small, np.float32(255), dtype=np.float32)
        pixels, _, _ = image_pixels(image)
        return working_view(pixels, size)


__all__ = ["Watermarker", "apply_residual", "image_pixels", "mark_pixels", "pil_to_rgb",
           "pixels_to_image", "rgb_to_pil", "search_config", "to_working_size"]
