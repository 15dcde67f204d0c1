"""``ImageMediaIO``: encoded image bytes (or an in-process image) to an RGB uint8 ``PIL.Image``.

Owns the image rules of the design: only allowed Pillow formats are opened,
the pixel count is checked from the header before any pixel is decoded,
EXIF orientation is applied, alpha is composited onto white and every mode
(CMYK, L, P, I;16, ...) ends up as RGB. Pillow errors are translated here.

An animated image (GIF, APNG, animated WebP) given as an *image* yields its
first frame only; send it as a video to get more frames.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ray_mm.config import MediaPolicy
from ray_mm.errors import MediaDecodeError, MediaLimitError, MMError
from ray_mm.media.base import DEFAULT_LABEL, MediaIO

_WHITE = (255, 255, 255)


class ImageMediaIO(MediaIO[Image.Image]):
    """Decode images under a ``MediaPolicy``."""

    def __init__(self, policy: MediaPolicy) -> None:
        self.policy = policy
        # Only names Pillow can open: an unknown name (Pillow 13 has no separate "MPO" opener) makes
        # Image.open raise KeyError for every non-image input instead of UnidentifiedImageError.
        self._formats = openable_formats(policy.image_formats)

    def load_bytes(
        self,
        data: bytes,
        *,
        label: str = DEFAULT_LABEL,
        options: dict[str, Any] | None = None,
        draft_size: Callable[[int, int, bool], tuple[int, int]] | None = None,
    ) -> Image.Image:
        """Decode to RGB. ``draft_size(w, h, swapped)`` opts into DCT-scaled JPEG decode: the
        decoder may shrink by 1/2, 1/4 or 1/8 while staying at least that size (raw orientation)."""
        if not data:
            raise MediaDecodeError(f"{label}: empty image data")
        try:
            with warnings.catch_warnings():
                # Our own cap below is the limit that counts; Pillow's bomb warning is noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                # Image.open reads only the header; ``formats`` stops Pillow trying other plugins.
                img = Image.open(io.BytesIO(data), formats=self._formats)
            self._check_pixels(img.width, img.height, label)
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", draft_size(img.width, img.height, _swaps_axes(img)))
            img.load()  # the actual decode, after the cap
        except MMError:
            raise
        except Image.DecompressionBombError as exc:
            # Pillow's own header check (global MAX_IMAGE_PIXELS) fired inside Image.open, before ours.
            m = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = m.group(1) if m else "too many"
            raise MediaLimitError(f"{label}: image has {pixels} pixels, over the cap of {self.policy.max_image_pixels}") from None
        except UnidentifiedImageError:
            raise MediaDecodeError(
                f"{label}: not a recognised image (allowed formats: {', '.join(self.policy.image_formats)})"
            ) from None
        except Exception as exc:  # truncated data, bad chunks, codec errors: all are bad input
            raise MediaDecodeError(f"{label}: cannot decode image ({type(exc).__name__}: {exc})") from None
        return self._finish(img, label)

    def load_pil(self, img: Image.Image, *, label: str = DEFAULT_LABEL) -> Image.Image:
        """An in-process PIL image: same cap and normalisation as decoded bytes."""
        self._check_pixels(img.width, img.height, label)
        try:
            img.load()
        except Exception as exc:
            raise MediaDecodeError(f"{label}: cannot load image ({type(exc).__name__}: {exc})") from None
        return self._finish(img, label)

    def load_array(self, arr: np.ndarray, *, label: str = DEFAULT_LABEL) -> Image.Image:
        """An in-process ``HxWx3`` (also ``HxW`` or ``HxWx4``) uint8 array."""
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
            raise MediaDecodeError(f"{label}: image arrays must be uint8 numpy arrays")
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or 0 in arr.shape:
            raise MediaDecodeError(f"{label}: image array must be HxWx3 (or HxW, HxWx4), got shape {arr.shape}")
        self._check_pixels(arr.shape[1], arr.shape[0], label)
        return self._finish(Image.fromarray(np.ascontiguousarray(arr)), label)

    def _check_pixels(self, width: int, height: int, label: str) -> None:
        if width <= 0 or height <= 0:
            raise MediaDecodeError(f"{label}: image has no pixels ({width}x{height})")
        if width * height > self.policy.max_image_pixels:
            raise MediaLimitError(
                f"{label}: image is {width}x{height} = {width * height} pixels, over the cap of {self.policy.max_image_pixels}"
            )

    def _finish(self, img: Image.Image, label: str) -> Image.Image:
        try:
            return to_rgb(_apply_exif(img))
        except MMError:
            raise
        except Exception as exc:
            raise MediaDecodeError(f"{label}: cannot convert image to RGB ({type(exc).__name__}: {exc})") from None


def openable_formats(formats: list[str]) -> list[str]:
    """The configured Pillow format names that this Pillow can open (upper-cased, order kept)."""
    Image.init()
    return [f.upper() for f in formats if f.upper() in Image.OPEN]


#: EXIF orientations that rotate or mirror the pixels (1 and anything else leave them as they are).
_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))


def _apply_exif(img: Image.Image) -> Image.Image:
    """``img`` turned upright by its EXIF orientation. Only a rotated or mirrored image becomes a new
    one: ``ImageOps.exif_transpose`` also copies every upright image (about 1.3 ms for a 1080p one
    here, some 8% of its whole media path), and nothing here needs that copy."""
    try:
        if img.getexif().get(ExifTags.Base.Orientation, 1) not in _TRANSPOSING_ORIENTATIONS:
            return img
        out = ImageOps.exif_transpose(img)
    except Exception:
        # A malformed EXIF block should not cost the user their image; the pixels are fine.
        return img
    return img if out is None else out


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited onto white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16"):
        # 16-bit greyscale: scale to 8 bits instead of letting convert() clip at 255.
        arr = (np.asarray(img, dtype=np.uint32) // 257).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("I", "F"):
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def _swaps_axes(img: Image.Image) -> bool:
    """True when the EXIF orientation rotates by 90 degrees (width and height trade places)."""
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        return False
