"""Encoding an image folder with a tiny CLIP `clip` backend on the bulk tests' Ray: ids are
relative paths, bad files land in the errors file, and the vectors are the backend's own."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from embedserve import EmbedInput
from embedserve.bulk.job import run_job
from embedserve.bulk.spec import InputSpec, JobSpec, detect_format
from embedserve.plugins.clip_backend import ClipBackend
from tests.bulk.conftest import output_errors, output_vectors
from tests.models.tiny import build_clip_family, photo

pytestmark = pytest.mark.integration
# Relative path -> (scikit-image photo, file format); the limit below lets all of them in.
PHOTOS = {
    "chelsea.png": ("chelsea", "PNG"),
    "coffee.jpg": ("coffee", "JPEG"),
    "street/astronaut.png": ("astronaut", "PNG"),
    "street/far/rocket.jpeg": ("rocket", "JPEG"),
}
MAX_PIXELS = 300_000  # the rocket is 427x640 = 273,280 pixels


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP model folder."""
    return build_clip_family("clip", tmp_path_factory.mktemp("tiny-clip"))


def _clip_config(folder: Path, tmp_path: Path) -> str:
    backend = {"kind": "clip", "options": {"model": str(folder)}, "resources": {"num_cpus": 0}}
    config = {
        "server": {"max_image_pixels": MAX_PIXELS},
        "backends": {"tiny-clip": backend},
        "models": {"tiny-clip": {"chain": ["tiny-clip"]}},
    }
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _file(image: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


def _photo_folder(root: Path) -> Path:
    """The photos, a byte-identical copy, a corrupt file, one over the pixel limit, and a
    hidden file (skipped)."""
    for relative, (name, image_format) in PHOTOS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(_file(photo(name), image_format))
    (root / "street" / "chelsea-copy.png").write_bytes((root / "chelsea.png").read_bytes())
    (root / "street" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    huge = np.zeros((600, 600, 3), dtype=np.uint8)
    (root / "street" / "far" / "huge.png").write_bytes(_file(huge, "PNG"))
    (root / ".thumbs.png").write_bytes(b"")
    return root


def _in_process(folder: Path, files: list[Path]) -> np.ndarray:
    """The same backend's vectors for the files, decoded with Pillow here."""
    backend = ClipBackend({"model": str(folder)})
    backend.load()
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return backend.embed_batch([EmbedInput(image=image) for image in images]).dense


def test_an_image_folder_is_encoded_with_path_ids_and_bad_files_in_errors(
    dashboard: str, tmp_path: Path, tiny_clip: Path
) -> None:
    photos = _photo_folder(tmp_path / "photos")
    assert detect_format(str(photos)) == "images"
    spec = JobSpec(
        input=InputSpec(path=str(photos), format="images"),
        output=str(tmp_path / "out"),
        model="tiny-clip",
        config=_clip_config(tiny_clip, tmp_path),
        batch_size=3,
    )
    manifest = run_job(spec, log=lambda line: None)
    output = Path(spec.output)

    vectors = output_vectors(output)  # fails on a repeated id
    good = [*PHOTOS, "street/chelsea-copy.png"]
    assert sorted(vectors) == sorted(good)
    errors = output_errors(output)
    assert set(errors) == {"street/broken.png", "street/far/huge.png"}
    assert "could not be decoded as an image" in errors["street/broken.png"]
    assert f"over the limit of {MAX_PIXELS} pixels" in errors["street/far/huge.png"]
    assert manifest.counts.distinct_ids == manifest.counts.input_rows == 7
    # The copy of chelsea.png is the same file: it is not decoded or embedded again.
    assert manifest.counts.texts_embedded == 6

    expected = _in_process(tiny_clip, [photos / relative for relative in good])
    got = np.stack([vectors[relative] for relative in good])
    cosines = np.sum(got * expected, axis=1) / np.linalg.norm(got, axis=1)
    assert cosines.min() >= 0.9999, dict(zip(good, cosines, strict=True))

    table = pq.read_table(output / "data")
    assert set(table.column("space_id").to_pylist()) == {manifest.space.space_id}
    assert set(table.column("dimensions").to_pylist()) == {24}
    assert set(table.column("normalized").to_pylist()) == {True}
    assert manifest.input.format == "images"
