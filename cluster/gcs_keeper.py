"""Restart the head's GCS server when it dies, as KubeRay restarts a head pod.

Ray does not restart `gcs_server` by itself. With GCS fault tolerance (an external Redis)
the rest of the cluster keeps running without it, and waits
`RAY_gcs_rpc_server_reconnect_timeout_s` (60 s) for it to come back. This re-runs the
command line the GCS was started with (what Ray's own tests do, `ray/_private/node.py`),
with its environment and working directory, so it rejoins the same session from Redis.

`cluster/local.sh start --gcs-redis` runs it as the last process of the head's process
group (`exec`), after `ray start --head` has returned: it watches the `gcs_server` of its
own group, and the restarted one joins the group, so `local.sh stop` stops both.

    python cluster/gcs_keeper.py [--restart-after SECONDS]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.5


@dataclass(frozen=True)
class CapturedProcess:
    """How a running process was started: enough to start it again."""

    pid: int
    argv: list[str]
    env: dict[str, str]
    cwd: str

    @classmethod
    def of(cls, pid: int) -> CapturedProcess:
        """Read a live process's command line, environment and working directory."""
        proc = Path(f"/proc/{pid}")
        argv = proc.joinpath("cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        pairs = [
            item.partition(b"=") for item in proc.joinpath("environ").read_bytes().split(b"\0")
        ]
        env = {key.decode(): value.decode() for key, _, value in pairs if key}
        return cls(pid, [arg.decode() for arg in argv], env, os.readlink(proc / "cwd"))

    def start_again(self) -> subprocess.Popen[bytes]:
        """The same command in the same environment (its log paths are in its arguments)."""
        return subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def process_in_group(group: int, name: str = "gcs_server") -> int | None:
    """The pid of the live process called `name` in a process group, if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = entry.joinpath("stat").read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ")".
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if comm == name and int(fields[2]) == group and fields[0] != "Z":
            return int(entry.name)
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def keep(restart_after: float) -> None:
    """Watch this process group's GCS server forever; start it again `restart_after`
    seconds after each death."""
    group = os.getpgrp()
    pid = process_in_group(group)
    if pid is None:
        sys.exit("gcs_keeper: no gcs_server runs in this process group")
    captured = CapturedProcess.of(pid)
    restarted: subprocess.Popen[bytes] | None = None  # a child: poll() also reaps it
    while True:
        time.sleep(POLL_S)
        alive = restarted.poll() is None if restarted is not None else _alive(captured.pid)
        if alive:
            continue
        print(f"gcs_keeper: gcs_server died at {time.strftime('%H:%M:%S')}", flush=True)
        time.sleep(restart_after)
        restarted = captured.start_again()
        print(f"gcs_keeper: restarted gcs_server as pid {restarted.pid}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--restart-after",
        type=float,
        default=1.0,
        help="seconds between a death and the restart (default 1)",
    )
    keep(parser.parse_args().restart_after)


if __name__ == "__main__":
    main()
