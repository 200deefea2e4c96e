"""Reaching Ray from the CLI, decided before Ray is imported: the client's authentication
mode (Ray reads it once), which cluster to join and why, and a stale address file (Ray
would retry it for minutes).

A leaf module: it imports nothing of embedserve, so every command that connects to Ray
can call it first.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

RAY_TOKEN_FILE = Path("~/.ray/auth_token")


class StaleRayAddress(Exception):
    """Ray's address file names a cluster whose head no longer answers."""


def use_ray_token_auth() -> None:
    """Ray 2.60 clusters started with `ray start` require token auth from clients: when a
    token file exists and no mode is chosen, select token mode (the token is read from
    `~/.ray/auth_token` or `RAY_AUTH_TOKEN` by Ray itself)."""
    has_token = "RAY_AUTH_TOKEN" in os.environ or RAY_TOKEN_FILE.expanduser().is_file()
    if has_token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"


def use_local_ray_auth() -> None:
    """Choose token auth for a new local Ray unless `RAY_AUTH_MODE` says otherwise.

    Ray 2.60 does the same by default and then logs a warning about it; choosing the mode
    here keeps that warning off the console of `embedserve serve`, whose banner says how
    to sign in to the dashboard instead.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def ray_address_file() -> Path:
    """Where `ray start --head` records the cluster that `address="auto"` joins (the rule
    of Ray's `get_default_system_temp_dir`)."""
    temp = os.environ.get("RAY_TMPDIR")
    if temp is None and sys.platform.startswith("linux"):
        temp = os.environ.get("TMPDIR")
    return Path(temp or "/tmp") / "ray" / "ray_current_cluster"


def recorded_ray_address() -> str | None:
    """The address in Ray's address file, or None without one."""
    try:
        return ray_address_file().read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class ChosenCluster:
    """The cluster a command joins and how it was chosen (for a user on a shared machine,
    where several clusters may run)."""

    address: str  # what `ray.init` gets: host:port, or `auto`
    how: str

    def describe(self, joined: str) -> str:
        """The line that says which cluster the command joined, and why that one."""
        return f"cluster {joined} ({self.how})"


def choose_cluster(address: str | None) -> ChosenCluster:
    """The cluster `ray.init(address)` joins, in Ray's order: an explicit address, then
    `RAY_ADDRESS`, then the address file of the last `ray start --head` here, then any
    Ray running on this machine."""
    if address not in (None, "auto"):
        return ChosenCluster(address, "from --address")
    if from_env := os.environ.get("RAY_ADDRESS"):
        return ChosenCluster(from_env, "from RAY_ADDRESS")
    if recorded := recorded_ray_address():
        path = ray_address_file()
        return ChosenCluster(recorded, f"from {path}: the last `ray start --head` here")
    return ChosenCluster(
        "auto", "found running here; no --address, RAY_ADDRESS or Ray address file chose it"
    )


def refuse_stale_ray_address(address: str | None) -> None:
    """Refuse to join `auto` when Ray's address file names a head that is gone.

    A head stopped without `ray stop` (killed, or its machine restarted) leaves the file
    behind, and Ray then retries the dead address for minutes, printing connection errors.

    Args:
        address: the address the command passes to `ray.init`; only `auto` reads the file
            (and only when `RAY_ADDRESS` does not name another cluster).

    Raises:
        StaleRayAddress: the recorded head does not accept connections.
    """
    chosen = os.environ.get("RAY_ADDRESS") or address
    if chosen != "auto":
        return
    path = ray_address_file()
    recorded = recorded_ray_address()
    if recorded is None:
        return
    host, _, port = recorded.rpartition(":")
    if not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StaleRayAddress(
            f"{path} names the Ray cluster at {recorded}, which does not answer ({reason}): "
            f"start that cluster again, pass --address, or delete {path}"
        ) from None
