"""Background training jobs: a queue served by one worker thread, with progress in plain objects.

The app keeps one ``JobManager`` per server process (not per browser session), so reloading the
page, opening a second tab or navigating away shows the same running job. Worker threads never
touch the UI: they write into ``Job.progress``; pages poll it.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from adcore.data import ImageSet
from adcore.files import describe_os_error
from adcore.methods import Cancelled
from adcore.training import TrainSpec, train_run

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED = "queued", "running", "finished", "failed", "cancelled"
ENDED = (FINISHED, FAILED, CANCELLED)


@dataclass
class Progress:
    """What the worker last published; read by the page without locks (single writer, plain values)."""

    phase: str = "waiting"
    step: int = 0
    total_steps: int = 0
    epoch: int | None = None
    loss: float | None = None
    images_per_s: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None  # of the current phase, from this phase's own rate
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) for the live curve
    selection: dict | None = None  # a self-configuring method's selection table, as it grows
    phase_started: float = field(default_factory=time.monotonic)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


ENGINES = {"local": "this machine (a background thread)", "ray": "a Ray cluster (a local instance without an address)"}


@dataclass
class Job:
    spec: TrainSpec
    image_set: ImageSet | None = None  # already opened by the caller: saves re-reading it
    engine: str = "local"  # one of ENGINES
    ray_address: str | None = None  # with engine "ray": the cluster; None: a local Ray instance
    engine_detail: str = ""  # where it runs, once known, e.g. "Ray, 1 GPU"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    status: str = QUEUED
    device: str = ""
    progress: Progress = field(default_factory=Progress)
    error: str | None = None
    traceback: str | None = None
    run_dir: Path | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def done(self) -> bool:
        return self.status in ENDED

    def cancel(self) -> None:
        """Ask the job to stop: a queued job ends now and never starts, a running one stops at its next report."""
        with self._lock:
            self.stop_event.set()
            if self.status == QUEUED:
                self.status, self.ended = CANCELLED, time.time()
                self.progress.phase = CANCELLED

    def _start(self) -> bool:
        """Move a queued job to running; False when it was cancelled first."""
        with self._lock:
            if self.stop_event.is_set() or self.status != QUEUED:
                if not self.done:
                    self.status, self.ended = CANCELLED, time.time()
                return False
            self.status, self.started = RUNNING, time.time()
            return True

    def _on_progress(self, event: dict) -> None:
        p = self.progress
        phase = event.get("phase", p.phase)
        now = time.monotonic()
        if phase != p.phase:
            p.phase, p.step, p.total_steps, p.eta_s, p.images_per_s = phase, 0, 0, None, None
            p.phase_started = now
        p.step = event.get("step", p.step)
        p.total_steps = event.get("total_steps", p.total_steps)
        p.epoch = event.get("epoch", p.epoch)
        p.elapsed_s = time.time() - (self.started or time.time())
        # Rates of this phase alone: a method's events count time from the start of its fit, so an
        # estimate from them would carry the earlier phases' time into a later, faster one.
        in_phase = now - p.phase_started
        if event.get("images") and in_phase > 0:
            p.images_per_s = event["images"] / in_phase
        if p.step and p.total_steps and in_phase > 0:
            p.eta_s = in_phase / p.step * (p.total_steps - p.step)
        if event.get("selection") is not None:
            p.selection = event["selection"]
        if event.get("loss") is not None and phase == "training":
            p.loss = event["loss"]
            p.losses = p.losses + [(p.step, p.loss)]  # replace, never mutate: readers may iterate


def describe_error(exc: BaseException) -> str:
    """The message a user sees; out-of-memory errors say what to change."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        text = describe_os_error(exc)  # the machine (a full disk), not the method: say it plainly
        return f"{text[:1].upper()}{text[1:]}."
    if "out of memory" in str(exc).lower():
        return (
            f"The GPU ran out of memory ({exc}). Try a smaller batch_size or image_size, "
            "or a smaller network width."
        )
    return text


class JobManager:
    """Runs submitted jobs one at a time (one device per server) in a daemon worker thread."""

    def __init__(self, runs_root: Path) -> None:
        self.runs_root = Path(runs_root)
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job] = queue.Queue()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="adcore-training", daemon=True)
        self._worker.start()

    def submit(self, spec: TrainSpec, image_set: ImageSet | None = None, *, engine: str = "local",
               ray_address: str | None = None) -> Job:
        """Queue a training; pass the ``image_set`` the page already opened to skip re-reading it.

        ``engine`` "local" trains in this server's worker thread, one job at a time; "ray" submits the
        job to Ray at once (its own thread waits for it), where jobs wait for a free GPU or node."""
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if ray_address and engine != "ray":
            raise ValueError("a Ray address goes with the ray engine")
        job = Job(spec=spec, image_set=image_set, engine=engine, ray_address=ray_address)
        with self._lock:
            self._jobs[job.id] = job
        if engine == "ray":
            threading.Thread(target=self._run, args=(job,), name=f"adcore-ray-{job.id}", daemon=True).start()
        else:
            self._queue.put(job)
        return job

    def jobs(self) -> list[Job]:
        """All jobs of this server, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.submitted, reverse=True)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def active(self) -> list[Job]:
        """Running and queued jobs, in the order they will run."""
        return sorted((j for j in self.jobs() if not j.done), key=lambda j: j.submitted)

    def queue_position(self, job: Job) -> int:
        """0 for the running job, 1 for the next queued one, ..."""
        return next((i for i, j in enumerate(self.active()) if j.id == job.id), -1)

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job.id} still {job.status} after {timeout} s")
            time.sleep(0.05)
        return job

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            self._run(job)

    def _run(self, job: Job) -> None:
        if not job._start():
            return
        try:
            if job.engine == "ray":
                self._run_on_ray(job)
            else:
                from adcore.device import describe_device, pick_device

                job.device = describe_device(pick_device(job.spec.device))
                job.engine_detail = "this machine"
                job.run_dir = train_run(
                    job.spec,
                    self.runs_root,
                    on_progress=job._on_progress,
                    stop_event=job.stop_event,
                    image_set=job.image_set,
                )
            job.status = FINISHED
        except Cancelled:
            job.status = CANCELLED
        except Exception as exc:  # noqa: BLE001 - any failure must reach the page, not kill the worker
            job.error = describe_error(exc)
            job.traceback = traceback.format_exc()
            job.status = FAILED
        finally:
            job.ended = time.time()
            job.progress.phase = job.status

    def _run_on_ray(self, job: Job) -> None:
        from dataclasses import replace

        from adcore.ray_training import connect, train_on_ray

        connect(job.ray_address)  # for good: the server's Ray jobs share one connection (the first one's address)
        spec = job.spec
        if str(spec.data).startswith("<") and job.image_set is not None:
            spec = replace(spec, data=str(job.image_set.root))  # uploads: the folder they were saved in

        def submitted(detail: str) -> None:
            job.engine_detail = job.device = detail

        job.run_dir = train_on_ray(spec, self.runs_root, address=job.ray_address, on_progress=job._on_progress,
                                   stop_event=job.stop_event, on_submitted=submitted)
