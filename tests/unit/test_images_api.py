"""Images and the native API through the router's HTTP app, in process (no Ray): image
items in JSON and multipart uploads, decoding and its limits, modality checks, sparse
and multi-vector outputs. The photos are scikit-image's sample files."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI

from embedserve.serving.images import decode_image
from tests.models.tiny import photo, photo_file
from tests.unit.fakes import BackendHandle, assert_error, call, embed, make_app, make_config
from tests.unit.image_fakes import ImageOnly, PixelHash, histogram, image_registry

PIXELS = {"kind": "pixel-hash", "options": {"dimensions": 32}}
IMAGES_ONLY = {"kind": "image-only", "options": {"dimensions": 32}}
TEXT_ONLY = {"kind": "hash", "options": {"dimensions": 32}}


class PixelHandle(BackendHandle):
    backend_class = PixelHash


class ImageOnlyHandle(BackendHandle):
    backend_class = ImageOnly


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    image_registry(monkeypatch)
    config = make_config(
        {"pixels": PIXELS, "images": IMAGES_ONLY, "texts": TEXT_ONLY},
        {
            "multi": {"chain": ["pixels"]},
            "vision": {"chain": ["images"]},
            "words": {"chain": ["texts"]},
        },
        max_image_bytes=2_000_000,
        max_image_pixels=1_000_000,
    )
    handles = {"pixels": PixelHandle, "images": ImageOnlyHandle}
    return make_app(config, handles)[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def native(app: FastAPI, **body: Any):
    return call(app, "POST", "/v1/embed", json=body)


def expected_image_vector(name: str) -> np.ndarray:
    return histogram(photo(name), 32)


def test_native_endpoint_embeds_texts_and_images_in_input_order(app: FastAPI) -> None:
    items = [
        {"text": "a cat on a sofa"},
        {"image": b64(photo_file("chelsea", "PNG"))},
        {"image": "data:image/png;base64," + b64(photo_file("astronaut", "PNG"))},
    ]
    response = native(app, model="multi", items=items, input_type="query")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["index"] for row in body["data"]] == [0, 1, 2]
    assert body["dimensions"] == 32 and body["backend"] == "pixels" and body["normalized"]
    assert response.headers["X-Embedding-Backend"] == "pixels"
    assert np.allclose(body["data"][1]["dense"], expected_image_vector("chelsea"), atol=1e-6)
    assert np.allclose(body["data"][2]["dense"], expected_image_vector("astronaut"), atol=1e-6)
    assert body["data"][0].get("sparse") is None


def test_jpeg_webp_and_gif_decode_like_the_pillow_reference(app: FastAPI) -> None:
    import io

    from PIL import Image

    for image_format in ("JPEG", "WEBP", "GIF"):
        data = photo_file("coffee", image_format)
        reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        response = native(app, model="multi", items=[{"image": b64(data)}])
        assert response.status_code == 200, (image_format, response.text)
        assert np.allclose(response.json()["data"][0]["dense"], histogram(reference, 32), atol=1e-6)


def test_multipart_upload_gives_the_same_vectors_as_json(app: FastAPI) -> None:
    png, jpeg = photo_file("chelsea", "PNG"), photo_file("rocket", "JPEG")
    files = [
        ("text", (None, "a cat")),
        ("image", ("cat.png", png, "image/png")),
        ("image", ("rocket.jpg", jpeg, "image/jpeg")),
    ]
    form = {"model": "multi", "outputs": "dense,sparse"}
    uploaded = call(app, "POST", "/v1/embed", data=form, files=files)
    assert uploaded.status_code == 200, uploaded.text
    items = [{"text": "a cat"}, {"image": b64(png)}, {"image": b64(jpeg)}]
    sent = native(app, model="multi", items=items, outputs=["dense", "sparse"])
    assert [r["dense"] for r in uploaded.json()["data"]] == [
        r["dense"] for r in sent.json()["data"]
    ]
    assert uploaded.json()["data"][0]["sparse"]["indices"] == [0, 1]


def test_openai_endpoint_takes_image_items_for_an_image_model(app: FastAPI) -> None:
    png = photo_file("chelsea")
    response = embed(app, model="multi", input=["a cat", {"image": b64(png)}])
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == [0, 1] and data[1]["object"] == "embedding"
    assert np.allclose(data[1]["embedding"], expected_image_vector("chelsea"), atol=1e-6)


def test_sparse_and_multivector_outputs(app: FastAPI) -> None:
    items = [{"text": "b a"}, {"image": b64(photo_file("camera"))}]
    response = native(
        app, model="multi", items=items, outputs=["sparse", "multivector"], sparse_tokens=True
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["data"]
    assert "dense" not in first
    assert first["sparse"] == {"indices": [0, 1], "values": [1.0, 1.0], "tokens": ["a", "b"]}
    assert np.asarray(second["multivector"]).shape == (2, 32)


def test_outputs_the_model_lacks_are_400_on_outputs(app: FastAPI) -> None:
    response = native(app, model="words", items=[{"text": "x"}], outputs=["sparse"])
    assert assert_error(response, 400, "outputs")["code"] == "unsupported_output"


def test_modality_mismatch_is_400_naming_the_item(app: FastAPI) -> None:
    image = {"image": b64(photo_file("camera"))}
    error = assert_error(native(app, model="vision", items=[image, {"text": "x"}]), 400, "items[1]")
    assert error["code"] == "unsupported_modality" and "embeds only image" in error["message"]
    error = assert_error(embed(app, model="words", input=["x", image]), 400, "input[1]")
    assert "embeds only text" in error["message"]
    assert native(app, model="vision", items=[image]).status_code == 200


def test_corrupt_image_is_400_naming_the_item(app: FastAPI) -> None:
    corrupt = photo_file("chelsea", "PNG")[:300]
    error = assert_error(
        native(app, model="multi", items=[{"text": "x"}, {"image": b64(corrupt)}]), 400, "items[1]"
    )
    assert error["code"] == "invalid_image"
    assert_error(native(app, model="multi", items=[{"image": "not base64!"}]), 400, "items[0]")
    text_uri = "data:text/plain;base64," + b64(b"hello")
    assert_error(native(app, model="multi", items=[{"image": text_uri}]), 400, "items[0]")


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 16)  # only a few rows: it is never decoded
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [2_000, 50_000])
def test_decompression_bomb_is_413_naming_the_item(app: FastAPI, side: int) -> None:
    items = [{"text": "x"}, {"text": "y"}, {"image": b64(bomb_png(side, side))}]
    assert_error(native(app, model="multi", items=items), 413, "items[2]")


def test_image_over_the_byte_limit_is_413(app: FastAPI) -> None:
    big = photo_file("astronaut", "PNG") * 6  # trailing bytes: the size check comes first
    assert len(big) > 2_000_000
    assert_error(embed(app, model="multi", input=[{"image": b64(big)}]), 413, "input[0]")


def test_exif_orientation_is_applied_and_every_image_becomes_rgb() -> None:
    import io

    from PIL import Image

    source = Image.fromarray(photo("chelsea"))  # 451 wide, 300 high
    exif = source.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", exif=exif)
    upright = decode_image(buffer.getvalue(), "input", 10**7, 10**7)
    assert upright.shape == (451, 300, 3)
    gray = io.BytesIO()
    Image.fromarray(photo("camera")[..., 0]).save(gray, format="PNG")
    assert decode_image(gray.getvalue(), "input", 10**7, 10**7).shape == (512, 512, 3)
