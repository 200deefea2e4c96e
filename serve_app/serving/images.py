"""Image items: decoding and checks in the router, before any replica sees them.

Images arrive base64-encoded (raw base64 or a `data:` URI) in JSON, or as multipart
uploads. The router decodes them once with Pillow: the byte and pixel limits come from
the server config, Pillow's decompression-bomb guard is on, EXIF orientation is applied,
animations give their first frame, and every image becomes RGB. Replicas receive the
decoded `uint8` arrays, so untrusted bytes never reach a replica's decoder and a bad
image is a 400/413 naming its item, never a failed batch.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

import numpy as np

from embedserve.errors import InvalidRequest, PayloadTooLarge

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


@dataclass(frozen=True)
class ImageLimits:
    """The server's limits on one image: file bytes and pixels (width x height)."""

    max_bytes: int
    max_pixels: int


_DATA_URI = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,", re.IGNORECASE)


def decode_base64_image(encoded: str, param: str) -> bytes:
    """The bytes of a base64 image, bare or as a `data:image/...;base64,` URI.

    Raises:
        InvalidRequest: not base64, or a data URI that is not an image or not base64.
    """
    match = _DATA_URI.match(encoded)
    if match:
        media_type = (match.group("type") or "").lower()
        if media_type and not media_type.startswith("image/"):
            raise InvalidRequest(
                f"{param} is a data URI of {media_type}, not an image", param=param
            )
        encoded = encoded[match.end() :]
    elif encoded.startswith("data:"):
        raise InvalidRequest(f"{param} is a data URI that is not base64-encoded", param=param)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            f"{param} is not a base64-encoded image (or a data: URI of one)", param=param
        ) from None


def decode_image(data: bytes, param: str, max_bytes: int, max_pixels: int) -> np.ndarray:
    """An image file's first frame as an RGB `uint8` array (height, width, 3), upright.

    Args:
        data: the file's bytes (PNG, JPEG, WebP or GIF).
        param: the item's name in errors, such as `items[2]`.
        max_bytes: largest accepted file.
        max_pixels: most pixels (width x height) accepted, checked from the header before
            any pixel is decoded, so a decompression bomb costs nothing.

    Raises:
        PayloadTooLarge: the file or its pixel count is over the limits.
        InvalidRequest: empty, not an image, an unsupported format, or corrupt.
    """
    from PIL import Image, ImageOps

    if not data:
        raise InvalidRequest(f"{param} is an empty image", param=param)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{param} is {len(data)} bytes, over the image limit of {max_bytes} bytes", param=param
        )
    try:
        # Pillow's own guard stays on: it refuses images far past its default limit.
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        pixels = image.width * image.height
        if pixels > max_pixels:
            raise PayloadTooLarge(
                f"{param} is {image.width}x{image.height} pixels, over the limit of "
                f"{max_pixels} pixels",
                param=param,
            )
        image.seek(0)  # an animation's first frame
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)
    except PayloadTooLarge:
        raise
    except Image.DecompressionBombError:
        raise PayloadTooLarge(
            f"{param} has more pixels than the limit of {max_pixels}", param=param
        ) from None
    except Exception as exc:
        raise InvalidRequest(
            f"{param} could not be decoded as an image ({', '.join(FORMATS)}): "
            f"{type(exc).__name__}",
            param=param,
            code="invalid_image",
        ) from None
