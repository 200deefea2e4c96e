"""Attribution: embedserve's version, its installed dependencies and licences, and the
licence, model card and citation of every configured model (`embedserve about`,
`GET /v1/about`).

Dependency licences come from package metadata only (nothing is fetched): PEP 639's
`License-Expression`, else a short `License` field, else the trove classifiers.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections import deque
from collections.abc import Iterator

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel

from embedserve.backend import ModelAbout
from embedserve.config import EmbedServeConfig

DISTRIBUTION = "embedserve"
UNKNOWN_LICENSE = "unknown"
# A `License` field longer than this is usually the whole licence text, not its name.
_MAX_LICENSE_NAME = 80


class Dependency(BaseModel):
    """One installed distribution embedserve depends on, directly or not."""

    name: str
    version: str
    license: str
    license_source: str | None  # the metadata field the licence was read from
    summary: str | None = None
    home_page: str | None = None


class BackendAttribution(BaseModel):
    """The model behind one configured backend and where its licence is stated."""

    backend: str
    kind: str
    space_id: str
    served_as: list[str]  # the public models whose chain contains this backend
    about: ModelAbout | None


class AboutReport(BaseModel):
    """What `embedserve about` prints and `GET /v1/about` answers."""

    name: str = DISTRIBUTION
    version: str
    license: str
    backends: list[BackendAttribution]
    dependencies: list[Dependency]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _field(metadata: importlib.metadata.PackageMetadata, name: str) -> str | None:
    """One metadata field, None when absent (typeshed has `PackageMetadata.get` only
    from Python 3.12 on)."""
    if name not in metadata:
        return None
    return metadata[name]


def license_of(metadata: importlib.metadata.PackageMetadata) -> tuple[str, str | None]:
    """A distribution's licence and the metadata field it came from."""
    expression = _field(metadata, "License-Expression")
    if expression:
        return expression, "License-Expression"
    field = (_field(metadata, "License") or "").strip()
    if field and "\n" not in field and len(field) <= _MAX_LICENSE_NAME and field != "UNKNOWN":
        return field, "License"
    trove = metadata.get_all("Classifier") or []
    classifiers = [c.split(" :: ")[-1] for c in trove if c.startswith("License ::")]
    if classifiers:
        return " OR ".join(classifiers), "Classifier"
    if field and field != "UNKNOWN":
        return field.splitlines()[0][:_MAX_LICENSE_NAME] + " ...", "License"
    return UNKNOWN_LICENSE, None


def _requirements(dist: importlib.metadata.Distribution, extras: set[str]) -> Iterator[Requirement]:
    """The requirements of `dist` that apply here, with the given extras selected."""
    for line in dist.requires or []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in extras | {""}):
            yield requirement


def installed_dependencies(root: str = DISTRIBUTION) -> list[Dependency]:
    """Every installed distribution `root` requires, directly or not, with every extra of
    `root` (only those installed are found), sorted by name."""
    root_dist = importlib.metadata.distribution(root)
    queue = deque([(root_dist, set(root_dist.metadata.get_all("Provides-Extra") or []))])
    seen: dict[str, importlib.metadata.Distribution] = {}
    while queue:
        dist, extras = queue.popleft()
        for requirement in _requirements(dist, extras):
            key = _normalise(requirement.name)
            if key in seen or key == _normalise(root):
                continue
            try:
                seen[key] = importlib.metadata.distribution(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                continue  # an extra that is not installed
            queue.append((seen[key], set(requirement.extras)))
    return sorted((_dependency(d) for d in seen.values()), key=lambda d: _normalise(d.name))


def _dependency(dist: importlib.metadata.Distribution) -> Dependency:
    metadata = dist.metadata
    license_name, source = license_of(metadata)
    return Dependency(
        name=metadata["Name"],
        version=dist.version,
        license=license_name,
        license_source=source,
        summary=_field(metadata, "Summary"),
        home_page=_field(metadata, "Home-page") or _project_home(metadata),
    )


def _project_home(metadata: importlib.metadata.PackageMetadata) -> str | None:
    """The project URL most like a home page (`Project-URL: Homepage, https://...`)."""
    urls: dict[str, str] = {}
    for entry in metadata.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        urls.setdefault(_normalise(label).replace("-", ""), url.strip())
    for label in ("homepage", "home", "source", "sourcecode", "repository", "documentation"):
        if label in urls:
            return urls[label]
    return next(iter(urls.values()), None)


def backend_attributions(config: EmbedServeConfig) -> list[BackendAttribution]:
    """What each configured backend's plugin knows about its model."""
    return [
        BackendAttribution(
            backend=name,
            kind=backend.kind,
            space_id=config.space_id(name),
            served_as=[m for m, model in config.models.items() if name in model.chain],
            about=config.backend(name).about(),
        )
        for name, backend in config.backends.items()
    ]


def about_report(config: EmbedServeConfig) -> AboutReport:
    """embedserve's version and licence, the configured models and the dependencies."""
    dist = importlib.metadata.distribution(DISTRIBUTION)
    return AboutReport(
        version=dist.version,
        license=license_of(dist.metadata)[0],
        backends=backend_attributions(config),
        dependencies=installed_dependencies(),
    )


def format_about(report: AboutReport, verbose: bool = False) -> str:
    """The report as text; `verbose` adds citations, licence sources and home pages."""
    lines = [f"{report.name} {report.version} ({report.license})", "", "models:"]
    for item in report.backends:
        lines += _format_backend(item, verbose)
    lines += ["", f"dependencies ({len(report.dependencies)}):"]
    for dep in report.dependencies:
        lines.append(f"  {dep.name} {dep.version}: {dep.license}")
        if verbose:
            lines.append(f"    licence from: {dep.license_source or 'no licence metadata'}")
            if dep.home_page:
                lines.append(f"    home page: {dep.home_page}")
    return "\n".join(lines)


def _format_backend(item: BackendAttribution, verbose: bool) -> list[str]:
    about = item.about or ModelAbout()
    served = ", ".join(item.served_as) or "no public model"
    lines = [
        f"  {item.backend} ({item.kind}) serves {served}",
        f"    model: {about.model or 'not stated by its plugin'}",
        f"    licence: {about.license or 'not stated by its plugin'}",
        f"    model card: {about.model_card or 'none known'}",
    ]
    if verbose:
        lines.append(f"    space id: {item.space_id}")
        citation = about.citation or "none known"
        lines += ["    citation:", *(f"      {line}" for line in citation.splitlines())]
    return lines
