"""Batch scoring on Ray: the CSV of ``adcore.batch.score_to_csv``, scored by Ray Data workers.

The listing is cut into the same batches as the local engine (``entry_batches``); each batch is one
row of a Ray dataset, and ``map_batches`` hands it to a pool of stateful workers (``_BatchWorker``:
the model is loaded once per worker, on its GPU where the cluster has GPUs). A worker decodes its
batch's files itself and returns the batch's CSV text, made by the same ``BatchScorer`` as locally,
so the rows are the same text. The driver writes batches in their order through the same resumable
``PartialCsv`` as the local engine: a job killed and started again goes on after its last logged batch.

Workers read the images, the run folder or model file, and write heat maps, by path: on a cluster
these must be on storage every node sees. Ray is optional (``requirements-ray.txt``) and imported
only here, only when used.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from adcore.batch import (
    BatchScorer,
    ImageEntry,
    ImageListing,
    ScoredBatch,
    ScoreSummary,
    decoded_batches,
    entry_batches,
    resumable_csv,
)
from adcore.device import pick_device
from adcore.loaded_model import LoadedModel, load_model, model_from_run

RAY_REQUIREMENTS = "requirements-ray.txt"
# A local instance on a small machine: a small object store (it lives in /dev/shm) and no dashboard.
_LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2


class RayNotInstalled(ImportError):
    """Ray was asked for but is not installed: the message names the optional requirements file."""


def ray_available() -> bool:
    """Whether Ray (with Ray Data) is installed, without importing it."""
    from importlib.util import find_spec

    return find_spec("ray") is not None and find_spec("ray.data") is not None


def import_ray() -> Any:
    """The ``ray`` module, with ``ray.data``; ``RayNotInstalled`` saying how to get it if missing."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data needs the ray[data] extra: pandas, pyarrow)
    except ImportError as exc:
        raise RayNotInstalled(
            f"the Ray engine needs Ray, an optional extra: pip install -r {RAY_REQUIREMENTS} ({exc})"
        ) from None
    return ray


@dataclass(frozen=True)
class ModelSource:
    """Where each worker loads the model from: ``kind`` "run" (a run folder) or "model" (a model file)."""

    kind: str
    path: str
    device: str = "auto"

    def load(self) -> LoadedModel:
        device = pick_device(self.device)
        return load_model(self.path, device=device) if self.kind == "model" else model_from_run(self.path, device)


@contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """Connected to Ray for the block: the cluster at ``address``, an instance already started in this
    process, or else a small local instance with this machine's CPUs, shut down after."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    init_ray(ray, address)
    try:
        yield ray
    finally:
        ray.shutdown()


def init_ray(ray: Any, address: str | None) -> None:
    """``ray.init``: the cluster at ``address``, else a small local instance with this machine's CPUs."""
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=os.cpu_count() or 1,
            object_store_memory=_LOCAL_OBJECT_STORE_BYTES,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )


def worker_resources(ray: Any, workers: int | None) -> tuple[int, dict[str, float]]:
    """(number of workers, Ray resources of each): one GPU each where the cluster has GPUs (default:
    as many workers as GPUs), else an equal share of its CPUs (default: one worker per CPU).

    A CPU worker runs as many torch threads as this process (``_score_rows``), whatever its share:
    more workers than cores then contend for them, but score exactly as the local engine does."""
    cluster = ray.cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), int(cluster.get("CPU", 1))
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if gpus:
        if workers is not None and workers > gpus:
            raise ValueError(f"{workers} workers of one GPU each do not fit the cluster's {gpus} GPU(s)")
        return workers or gpus, {"num_gpus": 1}
    workers = workers or max(1, cpus)
    if workers > cpus:
        raise ValueError(f"{workers} workers of one CPU each do not fit the cluster's {cpus} CPU(s)")
    return workers, {"num_cpus": max(1, cpus // workers)}


class _BatchWorker:
    """A Ray Data worker: loads the model once, then scores batches (one dataset row each)."""

    def __init__(self, source: ModelSource, scorer_options: dict, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.decode_threads = threads or 1
        self.scorer = BatchScorer(source.load(), **scorer_options)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for entries_json in rows["entries"]:
            entries = [ImageEntry(Path(p), rel, split, label) for p, rel, split, label in json.loads(entries_json)]
            decoded = next(decoded_batches(entries, len(entries), workers=self.decode_threads))
            results.append(json.dumps(self.scorer(decoded).to_dict()))
        return {"batch": rows["batch"], "scored": np.array(results, dtype=object)}


def score_on_ray(
    model: LoadedModel,
    source: ModelSource,
    listing: ImageListing,
    out: Path | str,
    *,
    batch_size: int = 32,
    maps_dir: Path | str | None = None,
    map_overlay: bool = True,
    address: str | None = None,
    workers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    summary: ScoreSummary | None = None,
) -> ScoreSummary:
    """``adcore.batch.score_to_csv`` on Ray: the same ``out`` and ``.part``, row for row.

    ``model`` is ``source`` loaded here (it names the job in the resume log); the workers load
    ``source`` themselves. ``address``: a running cluster (``ray.init(address=...)``), else a local
    instance; ``workers``: the size of the worker pool (default: one per GPU, else one per CPU).
    """
    summary = summary if summary is not None else ScoreSummary()
    options = dict(batch_size=batch_size, maps_dir=maps_dir, map_overlay=map_overlay, on_batch=on_batch)
    with resumable_csv(model, listing, out, summary=summary, **options) as (part, scorer):
        rows = [
            {"batch": index, "entries": json.dumps([[str(e.path), e.rel_path, e.split, e.label] for e in batch])}
            for index, batch in enumerate(entry_batches(listing, batch_size))
            if index >= part.next_batch
        ]
        if rows:
            _score_rows(rows, part, scorer, source, address, workers, on_batch)
    return summary


def _score_rows(rows, part, scorer, source, address, workers, on_batch) -> None:
    with ray_session(address) as ray:
        n_workers, resources = worker_resources(ray, workers)
        ray.data.DataContext.get_current().enable_progress_bars = False  # the caller shows progress
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        options = {
            "mvtec": scorer.mvtec,
            "batch_size": scorer.batch_size,
            "maps_dir": scorer.maps_dir,
            "map_overlay": scorer.map_overlay,
        }
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _BatchWorker,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=n_workers),
            fn_constructor_kwargs={
                "source": source,
                "scorer_options": options,
                # The local engine's intra-op threads: float32 sums grouped alike, so the same scores
                # to the last digit (another thread count moves some in the 7th digit).
                "threads": None if "num_gpus" in resources else torch.get_num_threads(),
            },
            udf_modifying_row_count=False,
            **resources,
        )
        waiting: dict[int, ScoredBatch] = {}  # batches that finished before an earlier one
        for row in dataset.iter_rows():
            waiting[int(row["batch"])] = ScoredBatch.from_dict(json.loads(row["scored"]))
            while part.next_batch in waiting:
                result = waiting.pop(part.next_batch)
                part.append(result)
                if on_batch is not None:
                    on_batch(result.n_files)
