"""Where files are: local paths, `pkg:PACKAGE/FOLDER` inside an installed package, and
URIs (`s3://`, `gs://`, ...) opened through fsspec when it is installed."""

from __future__ import annotations

import importlib.resources
import os
import re
from pathlib import Path

PACKAGE_SCHEME = "pkg:"
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def user_cache(folder: str) -> Path:
    """embedserve's folder `folder` in the user's cache: `$XDG_CACHE_HOME/embedserve/...`,
    else `~/.cache/embedserve/...` (kept between replica starts and Ray sessions)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "embedserve" / folder


def package_path(location: str) -> Path:
    """The folder of `pkg:PACKAGE/FOLDER` inside the installed package."""
    package, _, folder = location[len(PACKAGE_SCHEME) :].partition("/")
    return Path(str(importlib.resources.files(package).joinpath(folder)))


def is_uri(location: str) -> bool:
    """`scheme://...`, other than `file://`: a location fsspec opens."""
    return bool(_URI.match(location)) and not location.startswith("file://")


def local_path(location: str) -> Path:
    """The local path of a location that is not a URI (`pkg:`, `file://`, `~`)."""
    if location.startswith(PACKAGE_SCHEME):
        return package_path(location)
    return Path(location.removeprefix("file://")).expanduser()
