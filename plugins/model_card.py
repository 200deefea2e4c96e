"""Attribution read from a Hugging Face model card (a model folder's README.md).

Hub model cards start with YAML front matter that states the licence (`license:
apache-2.0`); many end with a BibTeX block to cite. Only local files are read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from embedserve import ModelAbout

HUB_URL = "https://huggingface.co/"
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.DOTALL)
_BIBTEX = re.compile(r"```\s*bibtex\s*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def read_model_card(folder: Path | None) -> tuple[dict[str, Any], str]:
    """The front matter and the body of `folder/README.md`; empty when there is none."""
    card = folder / "README.md" if folder is not None else None
    if card is None or not card.is_file():
        return {}, ""
    text = card.read_text(encoding="utf-8", errors="replace")
    match = _FRONT_MATTER.match(text)
    if match is None:
        return {}, text
    try:
        front = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        front = None
    return (front if isinstance(front, dict) else {}), text[match.end() :]


def card_license(front_matter: dict[str, Any]) -> str | None:
    """The licence a card states: an id, or the name given with `license: other`."""
    license_id = front_matter.get("license")
    if isinstance(license_id, list):
        license_id = " OR ".join(str(item) for item in license_id)
    if license_id == "other" and front_matter.get("license_name"):
        return f"other: {front_matter['license_name']}"
    return str(license_id) if license_id else None


def model_about(
    model_id: str, folder: Path | None, hub_id: str | None, default_citation: str | None
) -> ModelAbout:
    """Attribution of a model: licence and BibTeX from its local card, a hub link.

    Args:
        model_id: the model's public id.
        folder: the local model folder, if any.
        hub_id: the model's id on the Hugging Face hub, if it has one.
        default_citation: cited when the card has no BibTeX block.
    """
    front_matter, body = read_model_card(folder)
    bibtex = _BIBTEX.search(body)
    return ModelAbout(
        model=model_id,
        license=card_license(front_matter),
        model_card=HUB_URL + hub_id if hub_id else None,
        citation=bibtex.group(1).strip() if bibtex else default_citation,
    )
