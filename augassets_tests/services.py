"""Real services for the scale tests: Debian's PostgreSQL and Redis on 127.0.0.1, each on a free port
with a throwaway data folder, stopped and removed at the end, also when the test fails. ``scripts/setup.sh`` installs
the Debian package; PostgreSQL refuses to run as root, so as root its commands run as the package's
``postgres`` user."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


class ServiceError(RuntimeError):
    pass


# Process groups started by the current test (its servers and workers, each a session of its own):
# what `survivors` looks for when the test ends. Other tests' services, run at the same time by other
# pytest workers, are in groups of their own and never counted.
STARTED_GROUPS: set[int] = set()


def started(process: subprocess.Popen) -> subprocess.Popen:
    """Register ``process`` (started with ``start_new_session=True``) as one of the current test's."""
    STARTED_GROUPS.add(process.pid)
    return process


def _processes_in(groups: set[int]) -> list[str]:
    """The ``pid command`` line of every live (not zombie) process whose process group is in ``groups``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue  # ended while being read
        state, pgid = fields[0], int(fields[2])
        if pgid in groups and state != "Z":
            found.append(f"{stat.parent.name} {command}")
    return sorted(found)


def survivors(grace: float = 15.0, groups: set[int] | None = None) -> list[str]:
    """Processes of ``groups`` (default: those the current test started) still alive after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        left = _processes_in(STARTED_GROUPS if groups is None else groups)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path:
    """The newest PostgreSQL server's ``bin`` folder (Debian: ``/usr/lib/postgresql/<major>/bin``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise ServiceError("PostgreSQL is not installed: run scripts/setup.sh (it installs Debian's postgresql)")
    return Path(found[-1]).parent


def _as_service_user() -> dict:
    """Popen arguments that run a command as ``postgres`` when this process is root (the server
    process itself, not a wrapper, so a signal to it reaches PostgreSQL)."""
    return {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}


def _stop(server: subprocess.Popen | None, how: int) -> None:
    """Stop ``server`` with the signal ``how``; SIGKILL after 20 s."""
    if server is None or server.poll() is not None:
        return
    server.send_signal(how)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A running PostgreSQL with one database, ``augassets``: yields its URL."""
    bin_dir, port = postgres_bin(), free_port()
    folder = Path(tempfile.mkdtemp(prefix="augassets-postgres-"))
    data, log = folder / "data", folder / "server.log"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = None
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            text=True,
            cwd=folder,
            **_as_service_user(),
        )
        with open(log, "w") as handle:
            if os.geteuid() == 0:
                shutil.chown(log, "postgres", "postgres")
            # fsync off: a throwaway cluster; the socket directory is the data folder (not /run/postgresql).
            server = started(
                subprocess.Popen(
                    [
                        str(bin_dir / "postgres"),
                        "-D",
                        str(data),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-k",
                        str(data),
                        "-F",
                    ],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    cwd=folder,
                    start_new_session=True,
                    **_as_service_user(),
                )
            )
        deadline = time.monotonic() + 60
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"PostgreSQL did not start on port {port}: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "augassets"], check=True
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/augassets"
    finally:
        _stop(server, signal.SIGINT)  # PostgreSQL's "fast" shutdown: ends the sessions, then stops
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def redis() -> Iterator[str]:
    """A running Redis (no persistence): yields its URL (database 0)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError("Redis is not installed: run scripts/setup.sh (it installs Debian's redis-server)")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="augassets-redis-"))
    log = folder / "server.log"
    server = None
    try:
        with open(log, "w") as handle:
            server = started(
                subprocess.Popen(
                    [
                        binary,
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--dir",
                        str(folder),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--protected-mode",
                        "yes",
                        "--proc-title-template",
                        "{title} {listen-addr} augassets-redis",
                    ],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    cwd=folder,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                probe.settimeout(0.5)
                try:
                    probe.connect(("127.0.0.1", port))
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        break
                except OSError:
                    pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"Redis did not start on port {port}: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(server, signal.SIGTERM)
        shutil.rmtree(folder, ignore_errors=True)
