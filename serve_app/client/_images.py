"""Images as the native endpoint takes them: base64 of an image file."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

# A file path, an image file's bytes, a PIL image, or an (H, W) / (H, W, 3|4) array.
ImageInput = Any


def image_item(image: ImageInput) -> dict[str, str]:
    """`{"image": <base64>}` for one image; a `data:image/...` URI string passes as is.

    Raises:
        TypeError: `image` is none of the accepted kinds.
    """
    if isinstance(image, str) and image.startswith("data:image/"):
        return {"image": image}
    return {"image": base64.b64encode(_image_file(image)).decode("ascii")}


def _image_file(image: ImageInput) -> bytes:
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        return _png(_array_image(image))
    from PIL import Image

    if isinstance(image, Image.Image):
        return _png(image)
    raise TypeError(
        f"an image must be a path, bytes, a PIL image or a numpy array, not {type(image).__name__}"
    )


def _array_image(array: np.ndarray) -> Any:
    """A PIL image of a uint8 array, or of a float array with values in [0, 1]."""
    from PIL import Image

    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def _png(image: Any) -> bytes:
    """Lossless, so the server sees exactly these pixels."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
