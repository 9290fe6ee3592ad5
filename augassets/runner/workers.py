"""Worker processes for the headless command: the partition ranges of a round's run groups, run at once.

A CPU machine's cores are used best by several small steps side by side: a mini classifier trains
about 1.5× faster as two one-thread processes than as one two-thread process (BENCHMARKS.md). With
``Profile.workers`` above 1, the headless command cuts a partitioned group's requested partitions
into contiguous chunks and hands them to that many processes, each running its chunks as Dagster
runs on the same instance (``execute_in_process``, as the command itself does). The partitioned
groups of one evaluation share one queue (``runner.runs.execute_on_workers``). A step over
partitions then uses ``Profile.partition_threads`` CPU threads wherever it runs, so a partition's
numbers do not depend on whether it ran in a worker or alone (``ComputeResource``).

The processes are started with ``spawn`` (a fork of a process that has started torch's thread pools
can deadlock), load the definitions once, and serve chunks until the command ends. SIGINT and
SIGTERM reach them through the command: their runs stop as an interrupted run does, and the command
ends with the interruption's message. A worker that dies (killed, out of memory) ends the command
with its exit code; its run is released by the next command on the home (``runner.command.release_dead_runs``).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..profiles import Profile
from .failures import INTERRUPTED, step_errors

# A group's chunks shrink as it is cut (``split_guided``): each takes 1/(CHUNKS_PER_WORKER × workers)
# of the partitions still to cut. Large chunks first keep the per-run cost (run start, resource and
# model loading) small; single partitions last let the workers end together.
CHUNKS_PER_WORKER = 2


@dataclass(frozen=True)
class Chunk:
    """One run of a chunk of partitions: its label (for the log), assets and run tags."""

    label: str
    asset_names: tuple[str, ...]
    tags: dict[str, str]


@dataclass(frozen=True)
class ChunkResult:
    label: str
    run_id: str
    errors: tuple[str, ...]  # the failing steps' own errors; empty when the run succeeded
    success: bool


def split_guided(keys: Sequence[str], workers: int) -> list[list[str]]:
    """``keys`` (contiguous and in order) as contiguous chunks of decreasing size, as OpenMP's guided
    schedule cuts a loop: each chunk is 1/(CHUNKS_PER_WORKER × ``workers``) of the keys not yet cut,
    at least one. Equal chunks left one worker training the last method's five classifiers while the
    other sat idle (about 4 of the default run's 12 classifier minutes); guided chunks end with single
    partitions, so the workers finish within about one partition of each other."""
    chunks, start = [], 0
    while start < len(keys):
        size = max(1, math.ceil((len(keys) - start) / (CHUNKS_PER_WORKER * max(1, workers))))
        chunks.append(list(keys[start : start + size]))
        start += size
    return chunks


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the command that started it dies (even by SIGKILL), so that an
    orphan never writes partitions the next command is rebuilding; the next command releases its run."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent check in the loop still ends an orphan between chunks


def _serve(profile: Profile, tasks, results, stop, parent: int) -> None:
    """A worker process: load the definitions and the instance once, then run chunks until told to
    stop. While a run executes, Dagster's own handlers turn SIGINT/SIGTERM into an interrupted step;
    outside runs, a signal is only noted, and chunks taken after it (or after the command set
    ``stop``) come back unrun. A signal in the moment between taking a chunk and the run's start is
    noted too late for that chunk, which then runs to its end."""
    _die_with_parent()
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    if os.getppid() != parent:
        return
    import dagster as dg
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from ..build import build_defs

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    defs = build_defs(profile, daemon=False)
    instance = dg.DagsterInstance.get()
    while os.getppid() == parent:
        try:
            item = tasks.get(timeout=2)
        except queue.Empty:
            continue
        if item is None:
            return
        index, chunk = item
        if stop.is_set() or received:
            results.put(("done", index, ChunkResult(chunk.label, "", (INTERRUPTED,), False)))
            continue
        results.put(("start", index, os.getpid()))
        try:
            keys = [dg.AssetKey.from_user_string(name) for name in chunk.asset_names]
            # Without the assets' checks: a check reads the whole asset, which other chunks are
            # writing; the command runs the checks once all chunks are done.
            job = defs.resolve_implicit_job_def_def_for_assets(keys).get_subset(
                asset_selection=set(keys), asset_check_selection=set()
            )
            result = job.execute_in_process(instance=instance, tags=chunk.tags, raise_on_error=False)
            done = ChunkResult(chunk.label, result.run_id, tuple(step_errors(result)), result.success)
        except Exception as error:  # outside a step (the run could not start): the chunk fails, the worker goes on
            done = ChunkResult(chunk.label, "", (f"{type(error).__name__}: {error}",), False)
        results.put(("done", index, done))


class Workers:
    """``count`` worker processes serving chunks of partitioned run groups (module docstring). Started
    on first use; :meth:`close` (or leaving the ``with`` block) stops them."""

    def __init__(self, profile: Profile, count: int):
        if count < 2:
            raise ValueError(f"Workers needs at least 2 processes, got {count} (Profile.workers)")
        self.profile, self.count = profile, count
        self._context = multiprocessing.get_context("spawn")
        self._processes: list = []
        self._tasks = self._results = None
        self._stop = self._context.Event()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        if self._processes:
            return
        self._tasks, self._results = self._context.Queue(), self._context.Queue()
        for _ in range(self.count):
            # Not daemonic: a step's DataLoader starts worker processes of its own.
            process = self._context.Process(
                target=_serve, args=(self.profile, self._tasks, self._results, self._stop, os.getpid())
            )
            process.start()
            self._processes.append(process)

    def run(self, chunks: Sequence[Chunk], say: Callable[[str], None]) -> list[ChunkResult]:
        """Run ``chunks`` on the workers; their results in ``chunks``' order. Blocks until every chunk
        has ended. SIGINT/SIGTERM received meanwhile are passed on to the workers: the runs they are in
        stop as interrupted runs, chunks not yet started come back unrun, all as failed (so does the
        chunk of a worker that died after the signal). A worker that dies otherwise raises ``WorkerDied``."""
        self._start()
        for index, chunk in enumerate(chunks):
            self._tasks.put((index, chunk))

        def forward(signum, _frame):
            self._stop.set()
            for process in self._processes:
                if process.is_alive():
                    os.kill(process.pid, signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        results: dict[int, ChunkResult] = {}
        running: dict[int, int] = {}  # worker pid -> the chunk it runs

        def interrupted(index: int) -> ChunkResult:
            return ChunkResult(chunks[index].label, "", (INTERRUPTED,), False)

        try:
            while len(results) < len(chunks):
                try:
                    kind, index, payload = self._results.get(timeout=1)
                except queue.Empty:
                    dead = [p for p in self._processes if not p.is_alive()]
                    if not dead:
                        continue
                    if not self._stop.is_set():
                        codes = ", ".join(f"pid {p.pid} exit code {p.exitcode}" for p in dead)
                        raise WorkerDied(
                            f"a worker process died ({codes}) with {len(chunks) - len(results)} chunk(s) unfinished; "
                            "rerun the command to resume (finished partitions are kept)"
                        ) from None
                    for process in dead:  # stopping: the chunk a dead worker held ends as interrupted
                        if process.pid in running:
                            lost = running.pop(process.pid)
                            results.setdefault(lost, interrupted(lost))
                    if len(dead) == len(self._processes):
                        for missing in set(range(len(chunks))) - set(results):
                            results[missing] = interrupted(missing)
                    continue
                if kind == "start":
                    running[payload] = index
                    continue
                running = {pid: i for pid, i in running.items() if i != index}
                results[index] = payload
                say(f"  {'done' if payload.success else 'FAILED'}: {payload.label}")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return [results[i] for i in range(len(chunks))]

    def close(self) -> None:
        """Stop the workers: chunks not yet taken are dropped, runs still executing are interrupted (SIGTERM,
        as Ctrl-C would), and a worker that has not ended 30 s later is killed."""
        if not self._processes:
            return
        self._stop.set()
        try:
            while True:
                self._tasks.get_nowait()
        except queue.Empty:
            pass
        for process in self._processes:
            self._tasks.put(None)
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
        for channel in (self._tasks, self._results):
            channel.cancel_join_thread()
            channel.close()
        self._processes = []


class WorkerDied(RuntimeError):
    """A worker process ended without reporting its chunk."""
