"""Executors: where the (condition × shard) prediction work runs.

* ``local`` - conditions one after the other in this process, streamed batch by batch.
* ``ray`` - shards of conditions (contiguous runs of whole batches) on a pool of Ray actors, each
  holding the model(s) once; the driver merges each condition's shard results in sample order
  and writes the same files as ``local``.

Both yield a :class:`Finished` per condition; results do not depend on the executor because every
random stream derives from (seed, condition, sample id) and shards are cut at batch boundaries.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
import torch
from tqdm.auto import tqdm

from medfail.data.base import SampleStream
from medfail.data.datasets import Dataset
from medfail.data.sample import Sample
from medfail.engine.allocator import return_freed_volumes
from medfail.engine.predictor import ConditionWriter, Part, Predictor
from medfail.engine.suite import Condition, SuiteConfig
from medfail.errors import MedfailInputError
from medfail.models.adapters import ModelAdapter
from medfail.uncertainty.postprocess import PostProcess
from medfail.uncertainty.sampling import NotApplicable

EXECUTORS = ("local", "ray")
#: a worker rebuilds ``[model, *ensemble]`` by calling this (e.g. :class:`ModelFiles`)
ModelLoader = Callable[[], Sequence[ModelAdapter]]


@dataclass(frozen=True)
class Job:
    """One condition to predict over ``dataset`` (``postprocess`` for ``morphology``)."""

    cond: Condition
    dataset: Dataset
    postprocess: PostProcess | None = None


@dataclass
class Finished:
    """A condition's outcome: its per-sample table, or why the method does not apply."""

    cond: Condition
    per_sample: pd.DataFrame | None
    seconds: float
    not_applicable: str = ""


class Executor(Protocol):
    def run(self, jobs: Sequence[Job]) -> Iterator[Finished]:
        """Predict and write every job's condition; one :class:`Finished` per job."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ModelFiles:
    """Rebuilds ``[model, *ensemble]`` from model references in a worker (for models that do not
    pickle, such as TorchScript or ONNX); the paths must be readable from every worker."""

    refs: tuple[str, ...]
    task: str
    spec_path: str | None = None
    trust_pickle: bool = False
    device: str = "cpu"
    #: ``onnxruntime``: the main model runs its export in ``onnx_cache`` when the main
    #: process's first-batch check passed (:mod:`medfail.models.onnx_export`)
    runtime: str = "torch"
    onnx_cache: str | None = None

    def __call__(self) -> list[ModelAdapter]:
        from medfail.models.loading import describe_model, load_model
        from medfail.models.onnx_export import apply_cached

        models = [load_model(ref, self.task, spec_path=self.spec_path,
                             trust_pickle=self.trust_pickle, device=self.device)
                  for ref in self.refs]
        if self.runtime == "onnxruntime" and self.onnx_cache and models:
            apply_cached(models[0], self.onnx_cache, describe_model(self.refs[0])["sha256"])
        return models


class ShardView(SampleStream):
    """Samples ``start:stop`` (in id order) of a dataset."""

    def __init__(self, dataset: Dataset, start: int, stop: int) -> None:
        self.dataset, self.ids = dataset, list(dataset.ids[start:stop])

    def load(self, id: str) -> Sample:
        return self.dataset.load(id)


def shards(n: int, batch_size: int, n_shards: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of at most ``n_shards`` runs of whole batches covering ``n`` samples."""
    batches = -(-n // batch_size)
    per = -(-batches // max(1, n_shards)) * batch_size
    return [(start, min(start + per, n)) for start in range(0, n, per)]


class LocalExecutor:
    """Runs conditions one after the other here, streaming each to its files."""

    def __init__(self, predictor: Predictor, progress: bool = False) -> None:
        self.predictor, self.progress = predictor, progress

    def run(self, jobs: Sequence[Job]) -> Iterator[Finished]:
        for job in jobs:
            t = time.perf_counter()
            writer = ConditionWriter(self.predictor.run_dir, job.cond, self.predictor.task)
            try:
                self.predictor.run(job.cond, job.dataset, writer.add, job.postprocess,
                                   self.progress)
            except NotApplicable as exc:
                writer.abort()
                yield Finished(job.cond, None, 0.0, str(exc))
                continue
            except BaseException:
                writer.abort()
                raise
            yield Finished(job.cond, writer.close(), time.perf_counter() - t)

    def close(self) -> None:
        pass


class _Worker:
    """A Ray actor: holds the model(s) and predicts shards of conditions."""

    def __init__(self, models: Sequence[ModelAdapter] | ModelLoader, config: SuiteConfig,
                 spacing_mm: bool, threads: int, dims: int = 2) -> None:
        torch.set_num_threads(threads)
        if dims == 3:
            return_freed_volumes()
        adapters = models() if callable(models) else models
        self.predictor = Predictor(adapters, config, spacing_mm, dims=dims)
        self.datasets: dict[int, Dataset] = {}

    def run(self, cond: Condition, data: tuple[int, list[Any]], start: int, stop: int
            ) -> tuple[Part | None, float, str]:
        """``(part, seconds, "")``, or ``(None, 0, why)`` when the method does not apply.

        ``data`` is ``(key, [object ref])``: the dataset is fetched once per worker.
        """
        import ray

        key, (ref,) = data
        if key not in self.datasets:
            self.datasets[key] = ray.get(ref)
        t = time.perf_counter()
        part = Part()
        try:
            self.predictor.run(cond, ShardView(self.datasets[key], start, stop), part.extend)
        except NotApplicable as exc:
            return None, 0.0, str(exc)
        return part, time.perf_counter() - t, ""


class RayExecutor:
    """(condition × shard) tasks on Ray actors; each condition merged and written here.

    ``morphology`` conditions (post-processing of stored predictions, no model) run locally.
    Ray starts on first use: a fully cached re-run never starts it.
    """

    SLOTS = 2  # tasks queued per actor, so actors never wait for the driver

    def __init__(self, predictor: Predictor, progress: bool = False, address: str | None = None,
                 workers: int | None = None, models: ModelLoader | None = None) -> None:
        self.local = LocalExecutor(predictor, progress)
        self.predictor, self.progress = predictor, progress
        self.address, self.workers, self.models = address, workers, models
        self.actors: list[Any] = []
        self.data: dict[int, tuple[int, list[Any]]] = {}  # dataset -> (key, [object ref])
        self.started_ray = False

    def _start(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self.started_ray = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if torch.cuda.is_available() else 0
        cpus = max(1, int(resources.get("CPU", 1)))
        n = self.workers or (gpus or max(1, cpus // 2))
        threads = max(1, cpus // n)
        p = self.predictor
        models = self.models or p.members
        try:
            payload = ray.put(models)
        except Exception as exc:  # pickling errors come in several types
            raise MedfailInputError(p.adapter.name, "this model cannot be sent to Ray workers "
                                    f"({exc}); pass model_loader=ModelFiles(...)") from exc
        # fractions keep every actor schedulable when there are more workers than CPUs/GPUs
        actor = ray.remote(num_cpus=min(float(threads), cpus / n),
                           num_gpus=min(1.0, gpus / n) if gpus else 0)(_Worker)
        self.actors = [actor.remote(payload, p.config, p.spacing_mm, threads, p.dims)
                       for _ in range(n)]

    def run(self, jobs: Sequence[Job]) -> Iterator[Finished]:
        remote = [j for j in jobs if j.cond.method != "morphology"]
        if remote:
            yield from self._run_remote(remote)
        yield from self.local.run([j for j in jobs if j.cond.method == "morphology"])

    def _run_remote(self, jobs: Sequence[Job]) -> Iterator[Finished]:
        import ray

        if not self.actors:
            self._start()
        for job in jobs:  # each dataset is sent once
            key = id(job.dataset)
            if key not in self.data:
                self.data[key] = (key, [ray.put(job.dataset)])
        # volumes: one per shard, so a worker's part (and the driver's queue) holds one volume
        cut = {id(j): shards(len(j.dataset), self.predictor.batch_size,
                             len(self.actors) if self.predictor.dims == 2 else len(j.dataset))
               for j in jobs}
        tasks = [(j.cond, self.data[id(j.dataset)], a, b) for j in jobs for a, b in cut[id(j)]]
        results = self._ordered(tasks)
        bar = tqdm(total=len(tasks), desc="shards", unit="shard", disable=not self.progress)
        for job in jobs:
            writer = ConditionWriter(self.predictor.run_dir, job.cond, self.predictor.task)
            seconds, why = 0.0, ""
            try:
                for _ in cut[id(job)]:
                    part, s, why_shard = next(results)
                    bar.update()
                    seconds, why = seconds + s, why or why_shard
                    if part is not None:
                        writer.add(part)
            except BaseException:
                writer.abort()
                raise
            if why:
                writer.abort()
                yield Finished(job.cond, None, 0.0, why)
            else:
                yield Finished(job.cond, writer.close(), seconds)
        bar.close()

    def _ordered(self, tasks: list[tuple[Any, ...]]) -> Iterator[Any]:
        """Results of ``tasks`` in task order, scheduled on whichever actor has a free slot."""
        import ray

        queue = deque(enumerate(tasks))
        free = [a for _ in range(self.SLOTS) for a in self.actors]
        running: dict[Any, tuple[int, Any]] = {}
        done: dict[int, Any] = {}
        for i in range(len(tasks)):
            while i not in done:
                while free and queue:
                    k, task = queue.popleft()
                    actor = free.pop(0)
                    running[actor.run.remote(*task)] = (k, actor)
                ready, _ = ray.wait(list(running), num_returns=1)
                k, actor = running.pop(ready[0])
                done[k] = ray.get(ready[0])
                free.append(actor)
            yield done.pop(i)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.data = [], {}
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False


def make_executor(name: str, predictor: Predictor, progress: bool = False,
                  address: str | None = None, workers: int | None = None,
                  models: ModelLoader | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``)."""
    if name == "local":
        return LocalExecutor(predictor, progress)
    if name != "ray":
        raise MedfailInputError(None, f"unknown executor {name!r}; choose one of "
                                f"{', '.join(EXECUTORS)}")
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise MedfailInputError(None, "the Ray executor needs Ray: pip install 'medfail[ray]'"
                                ) from exc
    if workers is not None and workers < 1:
        raise MedfailInputError(None, f"workers must be >= 1, got {workers}")
    return RayExecutor(predictor, progress, address, workers, models)
