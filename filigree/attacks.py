"""Real (non-differentiable) image attacks used to check that marks survive.

An attack is named by a spec string ``NAME[:PARAM]``; ``combo`` chains specs with ``+``:

=============  =========  ============================================================
spec           parameter  effect
=============  =========  ============================================================
``none``       --         identity (clean read-back)
``jpeg:Q``     int 1-100  JPEG round trip at quality Q (Pillow defaults, 4:2:0)
``resize:S``   (0, 4]     bicubic resize of both sides by S, not resized back
``crop:F``     (0, 1]     centre crop keeping fraction F of the area (sides * sqrt(F))
``offcrop:F``  (0, 1]     crop keeping fraction F of the area at a seeded random position
``shift:F``    [0, 0.5]   cut fraction F of the width and height off the left and top edges
``margin:F``   [0, 1]     a black margin of F times each side around the image
``rotate:D``   [-45, 45]  rotation by D degrees counter-clockwise (bicubic, same canvas size)
``mirror``     --         horizontal mirror
``noise:S``    [0, 1]     additive Gaussian noise, std S on the [0, 1] scale, seeded
``blur:S``     [0, 50]    Gaussian blur with std S pixels (``ImageFilter.GaussianBlur``)
``brightness`` (0, 10]    ``ImageEnhance.Brightness`` factor
``contrast``   (0, 10]    ``ImageEnhance.Contrast`` factor
``saturation`` (0, 10]    ``ImageEnhance.Color`` factor
``combo:A+B``  specs      applies A, then B, ...; combos do not nest
=============  =========  ============================================================

Attacks take and return RGB ``PIL.Image`` objects (alpha is dropped first) and are
deterministic for a given seed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

__all__ = [
    "ATTACKS",
    "DEFAULT_SUITE",
    "DEFAULT_SUITE_SPEC",
    "GEOMETRIC_SUITE_SPEC",
    "Attack",
    "AttackKind",
    "parse_attack",
    "default_suite_spec",
    "parse_suite",
]

ApplyFn = Callable[[Image.Image, int], Image.Image]


@dataclass(frozen=True)
class Attack:
    """A parsed attack; ``name`` is its canonical spec, ``apply(image, seed)`` runs it."""

    name: str
    apply: ApplyFn = field(compare=False, repr=False)

    def __call__(self, image: Image.Image, seed: int = 0) -> Image.Image:
        return self.apply(image, seed)

    def apply_array(self, rgb: np.ndarray, seed: int = 0) -> np.ndarray:
        """Attack float RGB in [0, 1] (``[H, W, 3]``) via an 8-bit image; returns float32."""
        pixels = np.rint(np.clip(np.asarray(rgb, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
        out = self.apply(Image.fromarray(pixels, "RGB"), seed)
        return np.asarray(out, dtype=np.float32) / np.float32(255)


@dataclass(frozen=True)
class AttackKind:
    """One registry entry: how to validate a parameter and build the attack."""

    name: str
    doc: str
    example: str
    parse: Callable[[str], float] | None
    build: Callable[[float], ApplyFn] = field(repr=False)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _identity(image: Image.Image, seed: int) -> Image.Image:
    return image.copy()


def _jpeg(quality: float) -> ApplyFn:
    def apply(image: Image.Image, seed: int) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(quality))
        with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
            return decoded.convert("RGB")

    return apply


def _scaled_size(image: Image.Image, factor: float) -> tuple[int, int]:
    return max(1, round(image.width * factor)), max(1, round(image.height * factor))


def _resize(scale: float) -> ApplyFn:
    def apply(image: Image.Image, seed: int) -> Image.Image:
        return image.resize(_scaled_size(image, scale), Image.BICUBIC)

    return apply


def _crop(fraction: float) -> ApplyFn:
    side = math.sqrt(fraction)

    def apply(image: Image.Image, seed: int) -> Image.Image:
        width, height = _scaled_size(image, side)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        return image.crop((left, top, left + width, top + height))

    return apply


def _offcentre_crop(fraction: float) -> ApplyFn:
    side = math.sqrt(fraction)

    def apply(image: Image.Image, seed: int) -> Image.Image:
        width, height = _scaled_size(image, side)
        rng = np.random.default_rng(seed)
        left = int(rng.integers(0, image.width - width + 1))
        top = int(rng.integers(0, image.height - height + 1))
        return image.crop((left, top, left + width, top + height))

    return apply


def _shift(fraction: float) -> ApplyFn:
    def apply(image: Image.Image, seed: int) -> Image.Image:
        left, top = round(image.width * fraction), round(image.height * fraction)
        return image.crop((min(left, image.width - 1), min(top, image.height - 1), image.width, image.height))

    return apply


def _margin(fraction: float) -> ApplyFn:
    def apply(image: Image.Image, seed: int) -> Image.Image:
        mx, my = round(image.width * fraction), round(image.height * fraction)
        canvas = Image.new("RGB", (image.width + 2 * mx, image.height + 2 * my))
        canvas.paste(image, (mx, my))
        return canvas

    return apply


def _rotate(degrees: float) -> ApplyFn:
    def apply(image: Image.Image, seed: int) -> Image.Image:
        return image.rotate(degrees, resample=Image.Resampling.BICUBIC)

    return apply


def _mirror(image: Image.Image, seed: int) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _noise(sigma: float) -> ApplyFn:
    def apply(image: Image.Image, seed: int) -> Image.Image:
        rng = np.random.default_rng(seed)
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255)
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(sigma)
        return Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8), "RGB")

    return apply


def _blur(sigma: float) -> ApplyFn:
    def apply(image: Image.Image, seed: int) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=sigma)) if sigma > 0 else image.copy()

    return apply


def _enhance(enhancer: type) -> Callable[[float], ApplyFn]:
    def build(factor: float) -> ApplyFn:
        def apply(image: Image.Image, seed: int) -> Image.Image:
            return enhancer(image).enhance(factor)

        return apply

    return build


def _number(
    low: float, high: float, *, low_open: bool = False, integer: bool = False
) -> Callable[[str], float]:
    """Parser for a finite number in [low, high] (or (low, high] when ``low_open``)."""
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"expected {kind} in {bounds}, got {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            raise ValueError(f"value {text!r} outside {bounds}")
        return value

    return parse


ATTACKS: Mapping[str, AttackKind] = MappingProxyType(
    {
        kind.name: kind
        for kind in (
            AttackKind("none", "identity", "none", None, lambda _: _identity),
            AttackKind("jpeg", "JPEG quality Q", "jpeg:50", _number(1, 100, integer=True), _jpeg),
            AttackKind(
                "resize", "scale factor", "resize:0.5", _number(0, 4, low_open=True), _resize
            ),
            AttackKind(
                "crop", "area fraction kept", "crop:0.8", _number(0, 1, low_open=True), _crop
            ),
            AttackKind(
                "offcrop", "area fraction kept", "offcrop:0.8", _number(0, 1, low_open=True), _offcentre_crop
            ),
            AttackKind("shift", "fraction cut off left and top", "shift:0.03", _number(0, 0.5), _shift),
            AttackKind("margin", "margin over side", "margin:0.1", _number(0, 1), _margin),
            AttackKind("rotate", "degrees", "rotate:2", _number(-45, 45), _rotate),
            AttackKind("mirror", "horizontal mirror", "mirror", None, lambda _: _mirror),
            AttackKind("noise", "Gaussian std on [0, 1]", "noise:0.04", _number(0, 1), _noise),
            AttackKind("blur", "Gaussian std in pixels", "blur:1", _number(0, 50), _blur),
            AttackKind(
                "brightness", "enhance factor", "brightness:1.3", _number(0, 10, low_open=True),
                _enhance(ImageEnhance.Brightness),
            ),
            AttackKind(
                "contrast", "enhance factor", "contrast:1.3", _number(0, 10, low_open=True),
                _enhance(ImageEnhance.Contrast),
            ),
            AttackKind(
                "saturation", "enhance factor", "saturation:1.3", _number(0, 10, low_open=True),
                _enhance(ImageEnhance.Color),
            ),
        )
    }
)


def parse_attack(spec: str) -> Attack:
    """Parse ``"jpeg:50"``, ``"combo:jpeg:70+resize:0.75"``, ... into an ``Attack``.

    Raises ValueError naming the problem for unknown attacks and bad or missing parameters.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty attack spec {spec!r}")
    text = spec.strip()
    name, _, rest = text.partition(":")
    if name.strip().lower() == "combo":
        return _parse_combo(rest, spec)
    return _parse_single(text)


def _parse_single(text: str) -> Attack:
    name, sep, param = (part.strip() for part in text.partition(":"))
    name = name.lower()
    kind = ATTACKS.get(name)
    if kind is None:
        known = ", ".join([*ATTACKS, "combo"])
        raise ValueError(f"unknown attack {name!r} in {text!r} (known: {known})")
    if kind.parse is None:
        if sep:
            raise ValueError(f"attack {name!r} takes no parameter, got {text!r}")
        return _attack(name, kind.build(0.0))
    if not param:
        raise ValueError(f"attack {name!r} needs a parameter ({kind.doc}), e.g. {kind.example}")
    if ":" in param:
        raise ValueError(f"attack {name!r} takes one parameter, got {text!r}")
    try:
        value = kind.parse(param)
    except ValueError as exc:
        raise ValueError(f"bad {kind.doc} for {name!r}: {exc}") from None
    return _attack(f"{name}:{value:g}", kind.build(value))


def _parse_combo(rest: str, spec: str) -> Attack:
    parts = [part.strip() for part in rest.split("+")]
    if not rest.strip() or any(not part for part in parts):
        raise ValueError(f"combo needs attacks joined by '+', got {spec!r}")
    stages = []
    for part in parts:
        if part.partition(":")[0].strip().lower() == "combo":
            raise ValueError(f"combos do not nest: {spec!r}")
        stages.append(_parse_single(part))
    chain = tuple(stages)

    def apply(image: Image.Image, seed: int) -> Image.Image:
        for index, stage in enumerate(chain):
            image = stage.apply(image, _stage_seed(seed, index))
        return image

    return _attack("combo:" + "+".join(stage.name for stage in chain), apply)


def _stage_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _attack(name: str, apply: ApplyFn) -> Attack:
    def run(image: Image.Image, seed: int = 0) -> Image.Image:
        return apply(_rgb(image), seed)

    return Attack(name, run)


def parse_suite(specs: str) -> tuple[Attack, ...]:
    """Parse comma-separated specs; a blank string is an empty suite; duplicates raise."""
    if not specs.strip():
        return ()
    attacks = tuple(parse_attack(part) for part in specs.split(","))
    names = [attack.name for attack in attacks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate attacks in suite: {', '.join(duplicates)}")
    return attacks


DEFAULT_SUITE_SPEC = (
    "jpeg:75,jpeg:50,jpeg:30,resize:0.5,resize:0.25,noise:0.04,blur:1,"
    "brightness:1.3,contrast:1.3,crop:0.8,combo:jpeg:70+resize:0.75+brightness:1.2"
)
DEFAULT_SUITE: tuple[Attack, ...] = parse_suite(DEFAULT_SUITE_SPEC)
GEOMETRIC_SUITE_SPEC = "offcrop:0.8,shift:0.05,margin:0.1,rotate:2,mirror"
"""The geometric edits that a re-synchronising (periodic) bundle is also verified against by
default: an 80 % crop anywhere, 5 % cut off two edges, a 10 % margin, a 2° rotation, a mirror."""


def default_suite_spec(periodic: bool) -> str:
    """The job's `--verify attacks` suite when none is given: `DEFAULT_SUITE_SPEC`, and for a
    periodic bundle `GEOMETRIC_SUITE_SPEC` after it."""
    return f"{DEFAULT_SUITE_SPEC},{GEOMETRIC_SUITE_SPEC}" if periodic else DEFAULT_SUITE_SPEC
