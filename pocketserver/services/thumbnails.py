"""Thumbnails with Pillow: the spec's sizes, "crop" and "scale", animated when asked.

Spec: client-server-api/modules/content_repo.md, "Thumbnails". The server picks one of
the recommended sizes (the smallest at least as large as asked), never upscales, and
answers with the original image when it is already no larger than the size asked.

Everything here is synchronous and runs in a worker thread. Image headers are checked
before decoding: a "pixel bomb" (a tiny PNG declaring 30000x30000) is refused with
:class:`ImageTooLarge` instead of being decoded; JPEGs are decoded at a reduced scale
(``draft``), which is what keeps a phone photo's thumbnail cheap on a Raspberry Pi.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

# (width, height, method) the server generates; requests map to one of these.
THUMBNAIL_SIZES: tuple[tuple[int, int, str], ...] = (
    (32, 32, "crop"),
    (96, 96, "crop"),
    (320, 240, "scale"),
    (640, 480, "scale"),
    (800, 600, "scale"),
)

THUMBNAILABLE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/apng")
# Types served as-is when the original is smaller than the size asked (all inline-safe).
_ORIGINAL_OK = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/apng")
MAX_ANIMATION_FRAMES = 200


class CannotThumbnail(Exception):
    """The content is not an image Pillow can read."""


class ImageTooLarge(Exception):
    """The image has more pixels than the server is willing to decode."""


@dataclass(frozen=True, slots=True)
class Thumbnail:
    data: bytes
    content_type: str
    width: int
    height: int


def choose_size(width: int, height: int, method: str) -> tuple[int, int, str]:
    """The recommended size to generate for a request (at least as large as asked)."""
    same = [s for s in THUMBNAIL_SIZES if s[2] == method]
    for s in same:
        if s[0] >= width and s[1] >= height:
            return s
    return same[-1]


def base_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def can_thumbnail(content_type: str | None) -> bool:
    return base_type(content_type) in THUMBNAILABLE_TYPES


def _scale_dims(w: int, h: int, tw: int, th: int) -> tuple[int, int]:
    """Fit (w, h) inside (tw, th) keeping the aspect ratio, never upscaling."""
    if w <= tw and h <= th:
        return w, h
    if tw * h < th * w:
        return tw, max(1, (tw * h) // w)
    return max(1, (th * w) // h), th


def make_thumbnail(
    data: bytes,
    content_type: str | None,
    width: int,
    height: int,
    method: str,
    animated: bool,
    max_pixels: int,
) -> Thumbnail | None:
    """A thumbnail of ``data``; None when the original should be served instead.

    Raises :class:`CannotThumbnail` for content that is not a readable image and
    :class:`ImageTooLarge` for images over ``max_pixels``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our own, lower limit is checked below
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise CannotThumbnail(str(e)) from None
    try:
        if img.format not in ("JPEG", "PNG", "GIF", "WEBP"):
            raise CannotThumbnail(f"unsupported image format {img.format}")
        w, h = img.size
        if w <= 0 or h <= 0:
            raise CannotThumbnail("empty image")
        is_anim = bool(getattr(img, "is_animated", False)) and animated
        if w <= width and h <= height and base_type(content_type) in _ORIGINAL_OK:
            # Never upscale: the original is the best thumbnail. An animated original is
            # only acceptable when animation was asked for.
            if is_anim or not getattr(img, "is_animated", False):
                return None
        if method == "crop":
            # Scale so the image covers the box, then cut the middle out.
            tw, th = min(width, w), min(height, h)
            ratio = max(tw / w, th / h)
            sw, sh = max(tw, round(w * ratio)), max(th, round(h * ratio))
        else:
            sw, sh = _scale_dims(w, h, width, height)
            tw, th = sw, sh
        if img.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when that is still at least the target.
            img.draft("RGB", (sw, sh))
        dw, dh = img.size
        if dw * dh > max_pixels:
            raise ImageTooLarge(f"{w}x{h} is too large to thumbnail")
        if is_anim:
            return _animated(img, sw, sh, tw, th, method)
        try:
            img.load()
            src_format = img.format
            upright: Image.Image = ImageOps.exif_transpose(img) or img
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise CannotThumbnail(str(e)) from None
        return _static(upright, src_format, sw, sh, tw, th, method)
    finally:
        img.close()


def _resize(img: object, sw: int, sh: int, tw: int, th: int, method: str) -> object:
    from PIL import Image

    assert isinstance(img, Image.Image)
    if img.size != (sw, sh):
        img = img.resize((sw, sh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if method == "crop" and (sw, sh) != (tw, th):
        left, top = (sw - tw) // 2, (sh - th) // 2
        img = img.crop((left, top, left + tw, top + th))
    return img


def _static(
    img: object, src_format: str | None, sw: int, sh: int, tw: int, th: int, method: str
) -> Thumbnail:
    from PIL import Image

    assert isinstance(img, Image.Image)
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode in ("P", "PA") else "RGB")
    out = _resize(img, sw, sh, tw, th, method)
    assert isinstance(out, Image.Image)
    buf = io.BytesIO()
    if src_format == "JPEG" and out.mode in ("RGB", "L"):
        out.save(buf, "JPEG", quality=80, optimize=True)
        ctype = "image/jpeg"
    else:
        out.save(buf, "PNG", optimize=True)
        ctype = "image/png"
    return Thumbnail(buf.getvalue(), ctype, out.size[0], out.size[1])


def _animated(img: object, sw: int, sh: int, tw: int, th: int, method: str) -> Thumbnail:
    """An animated WebP (the spec's preferred animated type) of every frame."""
    from PIL import Image, ImageSequence

    assert isinstance(img, Image.Image)
    frames = []
    durations = []
    try:
        for i, frame in enumerate(ImageSequence.Iterator(img)):
            if i >= MAX_ANIMATION_FRAMES:
                break
            f = _resize(frame.convert("RGBA"), sw, sh, tw, th, method)
            frames.append(f)
            durations.append(int(frame.info.get("duration", 100)) or 100)
    except (OSError, ValueError, SyntaxError) as e:
        raise CannotThumbnail(str(e)) from None
    first = frames[0]
    assert isinstance(first, Image.Image)
    buf = io.BytesIO()
    first.save(
        buf,
        "WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=int(img.info.get("loop", 0)),
        quality=75,
    )
    return Thumbnail(buf.getvalue(), "image/webp", first.size[0], first.size[1])
