"""Whether an image carries a readable mark at an acceptable visibility: decided on the marked
file itself, never from the image's size.

How many pixels a mark needs depends on the bundle's layout (how it spreads the payload over
the image, how much it amplifies the residual where there is little room) and on the content,
so no size rule is kept here. The mark is made, encoded as it will be written, and then judged:

* `visibility_failure`: the mark's PSNR against the data's own peak (see
  `filigree.imaging.decode.DecodedImage.peak`) must be at least the floor `min_psnr`; a layout
  that amplifies the residual for a small image lowers the PSNR and is refused here
  (`too_small`). A mark that changed no pixel value at all (PSNR infinite: the image has too
  few pixels for the residual to reach a rounding step) cannot be read (`unreadable`).
* `readback_failure`: the encoded file, read back by the extractor, must give back the very
  payload that was embedded (`unreadable` otherwise).

Both return None when the check passes, else a `MarkFailure` with a record's error code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from filigree.payload import ReadResult

DEFAULT_MIN_PSNR = 35.0
"""dB. The default visibility floor: the PSNR that training started from (its schedule rose
towards 42.5 dB); at 29-30 dB the bundled model's small-image marks showed as blotches."""


@dataclass(frozen=True)
class MarkFailure:
    """Why a marked image must not be written: `code` is `too_small` or `unreadable`."""

    code: str
    message: str


def visibility_failure(psnr: float, min_psnr: float = DEFAULT_MIN_PSNR) -> MarkFailure | None:
    """None when a mark of `psnr` dB (measured on the encoded file) is at or above the floor.

    A NaN PSNR is treated as a failure (nothing can be said about the mark)."""
    if math.isinf(psnr) and psnr > 0:
        return MarkFailure("unreadable", "marking changed no pixel value, so the image would carry no mark "
                                         "(it has too few pixels for the mark)")
    if math.isnan(psnr) or psnr < min_psnr:
        return MarkFailure("too_small", f"the mark would be visible: {psnr:.1f} dB PSNR is below the "
                                        f"--min_psnr floor of {min_psnr:g} dB (the image is too small "
                                        f"for this model to mark invisibly)")
    return None


def readback_failure(read: ReadResult, payload: str | None) -> MarkFailure | None:
    """None when the straight read of the marked file gives back `payload` exactly."""
    if payload is None or read.match is True:
        return None
    found = "no payload" if read.decoded is None else f"payload {read.decoded}"
    ber = "" if read.ber is None else f", {read.ber:.0%} of bits wrong"
    return MarkFailure("unreadable", f"the marked image does not read back its payload ({found}{ber}); "
                                     f"it is too small or too flat to carry this model's mark")
