"""`embedserve verify` without weights: how served and reference vectors are compared,
the inputs, the sample images without scikit-image, and the backends it skips."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from embedserve import EmbeddingBatch, OutputKind, SparseVector
from embedserve.cli.main import main
from embedserve.cli.verify import VERIFY_TEXTS, compare, sample_images, verify_inputs
from embedserve.config import load_config


def sparse(weights: dict[int, float]) -> SparseVector:
    ids = sorted(weights)
    return SparseVector(np.array(ids, dtype=np.int64), np.array([weights[i] for i in ids]))


def test_dense_cosines_per_item_and_a_shape_mismatch_is_a_failure() -> None:
    served = np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    reference = np.array([[2.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    [dense] = compare(EmbeddingBatch(served), EmbeddingBatch(reference), [OutputKind.DENSE])
    assert np.allclose(dense.cosines, [1.0, np.sqrt(0.5)])
    assert dense.passed(0.7) and not dense.passed(0.999)
    assert "min 0.707107  mean 0.853553  under 0.999" in dense.line(0.999)

    [mismatch] = compare(EmbeddingBatch(served), EmbeddingBatch(served[:, :1]), [OutputKind.DENSE])
    assert not mismatch.passed(0.0)
    assert "served shape (2, 2), reference (2, 1)" in mismatch.line(0.999)


def test_sparse_cosines_are_over_the_union_of_token_ids() -> None:
    dense = np.ones((3, 1), dtype=np.float32)
    served = EmbeddingBatch(dense, sparse=[sparse({5: 1.0}), sparse({5: 1.0, 7: 1.0}), sparse({})])
    reference = EmbeddingBatch(dense, sparse=[sparse({5: 3.0}), sparse({7: 1.0}), sparse({})])
    [agreement] = compare(served, reference, [OutputKind.SPARSE])
    # Same direction; one shared token of two; both empty (nothing to disagree on).
    assert np.allclose(agreement.cosines, [1.0, np.sqrt(0.5), 1.0])


def test_multivector_cosines_per_token_and_a_token_count_mismatch() -> None:
    dense = np.ones((1, 1), dtype=np.float32)
    tokens = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    served = EmbeddingBatch(dense, multivector=[tokens])
    [same] = compare(served, EmbeddingBatch(dense, multivector=[tokens]), [OutputKind.MULTIVECTOR])
    assert np.allclose(same.cosines, [1.0, 1.0])
    shorter = EmbeddingBatch(dense, multivector=[tokens[:1]])
    [mismatch] = compare(served, shorter, [OutputKind.MULTIVECTOR])
    assert not mismatch.passed(0.0) and "item 0: served shape (2, 2)" in mismatch.line(0.9)


def test_texts_go_as_queries_and_documents() -> None:
    backend = load_config(None).backend("hash")  # a text backend with a dense output
    inputs = verify_inputs(backend)
    assert [item.text for item in inputs] == [*VERIFY_TEXTS, *VERIFY_TEXTS]
    assert {item.input_type.value for item in inputs} == {"query", "document"}
    assert all(item.image is None for item in inputs)


def test_generated_images_without_scikit_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage` raises ImportError
    images = sample_images()
    assert len(images) == 3
    assert all(image.shape == (96, 96, 3) and image.dtype == np.uint8 for image in images)
    assert not np.array_equal(images[0], images[1])


def test_a_backend_without_a_reference_library_is_skipped(capsys) -> None:
    assert main(["verify", "--in-process", "--model", "hash"]) == 0
    out = capsys.readouterr().out
    assert "hash (hash, in this process): no reference library, skipped" in out
    assert "verify: 0 agree with their reference, 0 do not, 1 skipped" in out


def test_an_unknown_model_is_a_config_error(capsys) -> None:
    assert main(["verify", "--in-process", "--model", "nope"]) == 2
    assert "unknown model nope" in capsys.readouterr().err
