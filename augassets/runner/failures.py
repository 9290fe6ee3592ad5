"""How a failed or interrupted run reads: the failing steps' own errors, a stop by signal named as one.

A leaf of the runner: the command (``runner.runs``) and its worker processes (``runner.workers``)
both report failures with these messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

INTERRUPTED = (
    "interrupted by SIGTERM or Ctrl-C: the run is marked failed and its pool slots are free; rerun the command "
    "to resume (finished partitions and chunks are kept)"
)


# How a stop by signal shows inside a step: Dagster's own interruption, or a library that caught the
# signal mid-call and raised its own error (DuckDB: "Query interrupted", from a query a step was running).
INTERRUPT_CLASSES = {"DagsterExecutionInterruptedError", "KeyboardInterrupt", "InterruptException"}
INTERRUPT_MESSAGES = ("Query interrupted",)


def root_cause(error) -> str:
    """The innermost error of a step failure (the asset's own exception, with its message), not
    Dagster's "Error occurred while executing op" wrapper around it. A stop by signal says so."""
    while error.cause is not None:
        error = error.cause
    if error.cls_name in INTERRUPT_CLASSES or any(text in error.message for text in INTERRUPT_MESSAGES):
        return INTERRUPTED
    return error.message.strip()


class RunFailed(RuntimeError):
    """A headless run failed; the message carries the failing steps' own errors."""


def step_errors(result: dg.ExecuteInProcessResult) -> list[str]:
    """The root causes of a run's failed steps (empty for a run that succeeded)."""
    return [root_cause(event.step_failure_data.error) for event in result.all_events if event.is_step_failure]


def failure_message(label: str, errors: Sequence[str], run_id: str, more: str = "") -> str:
    """The message of a failed run: its steps' own errors, and where to look."""
    return (
        f"{label} failed: {' | '.join(errors) or 'see the run in the UI'} (run {run_id}; `augassets ui` shows it{more})"
    )
