"""Where steps execute: in their run's process (the default), as Celery tasks on workers, or as
Kubernetes Jobs (``AUGASSETS_EXECUTOR=k8s``, dagster-k8s; configuration in ``deploy/k8s/``).

With ``AUGASSETS_CELERY_BROKER`` set (a Redis URL, ``redis://host:6379/0``), the definitions use
dagster-celery's executor: every step of a run that the daemon or the UI launches is a Celery task.
Steps of the ``gpu`` pool (training, fine-tuning, generation, embedding) carry the tag
``dagster-celery/queue: gpu`` and go to the ``gpu`` queue, served by one worker per GPU with
concurrency 1 (``augassets worker --queue gpu``); the other steps go to dagster-celery's default
queue, ``dagster``. The headless command (``augassets benchmark``) always runs in its own process.

Celery settings (``CELERY_SETTINGS``): a task is acknowledged when it ends, not when a worker takes
it, and each worker takes one task at a time, so a worker that dies mid-step holds no other
step's task; the step fails with the worker's error (``WorkerLostError``) and the run fails naming
it. Dagster's run retries (``run_retries`` in the instance's ``dagster.yaml``, written there while
the broker is set: instance.py) re-execute the failed steps in a new run.
"""

from __future__ import annotations

import os

import dagster as dg

from .instance import CELERY_ENV, redacted

CELERY_BROKER_ENV = CELERY_ENV  # Redis URL of the Celery broker; unset: steps run in process
CELERY_BACKEND_ENV = "AUGASSETS_CELERY_BACKEND"  # Celery result backend; unset: the broker's URL
EXECUTOR_ENV = "AUGASSETS_EXECUTOR"  # k8s: steps as Kubernetes Jobs; unset: Celery with a broker, else in process
GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "dagster"  # dagster-celery's own default queue
QUEUE_TAG = "dagster-celery/queue"

# Under the k8s_job_executor: a step of the gpu pool is a pod with one GPU.
K8S_GPU = {"container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}

# The asset keyword arguments of a step that needs the accelerator: the gpu pool (one at a time per
# GPU, enforced by Dagster), under Celery the gpu queue, under Kubernetes a GPU for its pod.
GPU_POOL = "gpu"  # the concurrency pool of training, fine-tuning and generation steps
ON_GPU = {"pool": GPU_POOL, "op_tags": {QUEUE_TAG: GPU_QUEUE, "dagster-k8s/config": K8S_GPU}}

CELERY_SETTINGS = {
    "task_acks_late": True,  # acknowledged when done: a task taken by a worker that dies is not lost
    "worker_prefetch_multiplier": 1,  # a worker holds one task at a time
    "task_track_started": True,
    "broker_connection_retry_on_startup": True,
    "broker_connection_max_retries": 3,  # a broker gone mid-run: give up after 3 reconnections (Celery's default: 100)
    "result_expires": 86400,
}


class BrokerUnreachable(SystemExit):
    """The Celery broker cannot be reached: one line naming the setting."""


def celery_broker() -> str | None:
    return os.environ.get(CELERY_BROKER_ENV, "").strip() or None


def executor_config() -> dict:
    """dagster-celery's executor configuration: broker and backend read from the environment (so the
    URLs, passwords included, stay out of run configs and the UI)."""
    backend_env = CELERY_BACKEND_ENV if os.environ.get(CELERY_BACKEND_ENV, "").strip() else CELERY_BROKER_ENV
    return {
        "broker": {"env": CELERY_BROKER_ENV},
        "backend": {"env": backend_env},
        "config_source": dict(CELERY_SETTINGS),
    }


def executor() -> dg.ExecutorDefinition:
    """The definitions' executor: Kubernetes Jobs with ``AUGASSETS_EXECUTOR=k8s`` (configured by the
    run config, deploy/k8s/run_config.yaml), Celery when ``AUGASSETS_CELERY_BROKER`` is set, else in
    process (a run's steps one after another in its own process: the pools serialize the heavy steps
    anyway, and a process per step would import torch once more per step)."""
    chosen = os.environ.get(EXECUTOR_ENV, "").strip()
    if chosen not in ("", "k8s"):
        raise ValueError(
            f"{EXECUTOR_ENV}={chosen!r}: the only value is k8s (unset: Celery with {CELERY_BROKER_ENV}, else in "
            f"process)"
        )
    if chosen == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if not celery_broker():
        return dg.in_process_executor
    from dagster_celery import celery_executor

    return celery_executor.configured(executor_config(), name="celery")


def worker_yaml() -> str:
    """The ``-y`` file of ``dagster-celery worker start``: the same executor configuration the runs use."""
    import yaml

    return yaml.safe_dump({"execution": {"config": executor_config()}}, sort_keys=False)


def check_broker(url: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`BrokerUnreachable` unless a Redis server answers at ``url``."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping()
    except (redis.exceptions.RedisError, ValueError, OSError) as error:
        raise BrokerUnreachable(
            f"the Celery broker at {CELERY_BROKER_ENV}={redacted(url)} does not answer "
            f"({str(error).splitlines()[0][:160]}): "
            f"start Redis there, fix the URL, or unset {CELERY_BROKER_ENV} to run steps in process"
        ) from None
