"""Training jobs on Ray: one ``train_run`` as one Ray task, its progress and errors relayed back.

``train_on_ray`` submits the training to a Ray cluster (``address``) or a local instance, asking for
one GPU where the cluster has GPUs (so one job runs per GPU and the others wait in Ray's queue), else
the CPUs of one node. The task reports its progress to a small actor that the caller polls (so a
progress bar or the Train page sees the phases, steps and losses as for a local job); an error in the
task is raised here as itself; a stop request (or Ctrl-C) cancels the task with ``ray.cancel``.

The task writes the run in a temporary folder of the node it runs on and returns it packed as a zip
archive, which is unpacked into ``runs_root`` here: the finished run lands in the caller's runs folder
whether or not the nodes share storage. The photos are read by path, so the data set must be where the
node can see it (shared storage on a cluster). Ray is optional and imported only when used.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from adcore.methods import Cancelled, build_method
from adcore.ray_engine import ray_session
from adcore.training import TrainSpec, train_run

POLL_S = 0.2  # how often the caller collects the task's progress
SEND_EVERY_S = 0.2  # the task sends at most this often (and at every change of phase)
CANCEL_GRACE_S = 10.0  # after ray.cancel, how long a task may take to stop before it is killed


_CONNECT_LOCK = threading.Lock()


def connect(address: str | None = None) -> Any:
    """Connect this process to Ray for good (a server's jobs share the connection): to ``address``, or
    start a local instance; a process already connected keeps its connection. Returns ``ray``."""
    from adcore.ray_engine import import_ray, init_ray

    ray = import_ray()
    with _CONNECT_LOCK:
        if not ray.is_initialized():
            init_ray(ray, address)
    return ray


def training_resources(ray: Any) -> dict[str, float]:
    """What one training task asks Ray for: one GPU (and a CPU) where the cluster has GPUs, else all
    the CPUs of its largest node (so CPU jobs do not share, and slow, each other's cores)."""
    if ray.cluster_resources().get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 1}
    node_cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return {"num_cpus": max(1, int(max(node_cpus, default=1)))}


def describe_resources(resources: dict[str, float]) -> str:
    """How a job's engine is shown to people, e.g. "Ray, 1 GPU"."""
    if resources.get("num_gpus"):
        return f"Ray, {resources['num_gpus']:g} GPU"
    return f"Ray, {resources['num_cpus']:g} CPU"


class _Progress:
    """A Ray actor: the task puts its progress events, the caller takes them."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def put(self, event: dict) -> None:
        self.events.append(event)

    def take(self) -> list[dict]:
        events, self.events = self.events, []
        return events


def _train_task(spec: TrainSpec, progress: Any, threads: int) -> tuple[str, bytes]:
    """Runs on a Ray worker: train, and return (run folder name, the folder zipped)."""
    import torch

    torch.set_num_threads(max(1, threads))
    last = {"phase": None, "sent": 0.0}

    def on_progress(event: dict) -> None:
        now = time.monotonic()
        if event.get("phase") != last["phase"] or now - last["sent"] >= SEND_EVERY_S:
            last["phase"], last["sent"] = event.get("phase"), now
            progress.put.remote(event)

    with tempfile.TemporaryDirectory(prefix="adcore-ray-run-") as scratch:
        run_dir = train_run(spec, Path(scratch), on_progress=on_progress)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for path in sorted(run_dir.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(run_dir).as_posix())
        return run_dir.name, buffer.getvalue()


def train_on_ray(
    spec: TrainSpec,
    runs_root: Path | str,
    *,
    address: str | None = None,
    on_progress: Callable[[dict], None] | None = None,
    stop_event: threading.Event | None = None,
    on_submitted: Callable[[str], None] | None = None,
) -> Path:
    """``train_run`` as a Ray task; returns the run folder, unpacked under ``runs_root``.

    Raises ``Cancelled`` when ``stop_event`` is set (or on Ctrl-C) after cancelling the task, and the
    task's own exception when training failed. ``on_submitted(engine)`` says where the job went,
    e.g. "Ray, 1 GPU". ``spec.data`` must be a path the Ray node can read.
    """
    stop_event = stop_event or threading.Event()
    build_method(spec.method, **spec.params).get_params()  # a bad parameter fails here, before Ray starts
    if not str(spec.data).startswith("<"):
        spec = replace(spec, data=str(Path(spec.data).resolve()))  # the worker's working folder differs
    with ray_session(address) as ray:
        resources = training_resources(ray)
        if on_submitted is not None:
            on_submitted(describe_resources(resources))
        progress = ray.remote(num_cpus=0)(_Progress).remote()
        try:
            name, packed = _follow(ray, spec, resources, progress, on_progress, stop_event)
        finally:
            ray.kill(progress)
    return _unpack(packed, Path(runs_root) / name)


def _follow(ray, spec, resources, progress, on_progress, stop_event) -> tuple[str, bytes]:
    """Submit the task, relay its progress until it ends, and return its result (or raise)."""
    task = ray.remote(max_retries=0)(_train_task).options(**resources)
    ref = task.remote(spec, progress, int(resources.get("num_cpus", 1)))
    if on_progress is not None:
        on_progress({"phase": "waiting for Ray", "step": 0, "total_steps": 0})
    try:
        while True:
            done, _ = ray.wait([ref], timeout=POLL_S)
            _relay(ray, progress, on_progress)
            if done:
                break
            if stop_event.is_set():
                _cancel(ray, ref)
                raise Cancelled("training was cancelled")
    except KeyboardInterrupt:
        _cancel(ray, ref)
        raise Cancelled("training was cancelled (Ctrl-C)") from None
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        raise Cancelled("training was cancelled") from None
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def _relay(ray: Any, progress: Any, on_progress: Callable[[dict], None] | None) -> None:
    events = ray.get(progress.take.remote())
    if on_progress is not None:
        for event in events:
            on_progress(event)


def _cancel(ray: Any, ref: Any) -> None:
    """Cancel the task (KeyboardInterrupt in it), and kill its worker if it has not stopped in time."""
    ray.cancel(ref)
    done, _ = ray.wait([ref], timeout=CANCEL_GRACE_S)
    if not done:
        ray.cancel(ref, force=True)
        ray.wait([ref], timeout=CANCEL_GRACE_S)


def _unpack(packed: bytes, run_dir: Path) -> Path:
    if run_dir.exists():
        raise FileExistsError(f"{run_dir} already exists")
    partial = run_dir.with_name(f".{run_dir.name}.unpacking-{os.getpid()}")
    with zipfile.ZipFile(io.BytesIO(packed)) as archive:
        archive.extractall(partial)
    partial.rename(run_dir)  # the run appears only when complete
    return run_dir
