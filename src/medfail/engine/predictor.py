"""Predict one condition (perturb -> predict -> per-sample results) and write its files.

A :class:`Part` is what consecutive samples of one condition produced. Parts concatenate in
sample order, and pixel-bin sums add exactly (float16 probabilities summed in float64 stay exact
below 2**29 per bin), so a condition written from one streamed pass or from shards merged by an
executor gives identical files.

Instance masks (``Sample.instances``, see :mod:`medfail.data.masks`): prompts are one per
instance and the lesion counts ``lesion_tp/fn/fp`` count one GT object per instance (touching
objects stay separate) instead of one per connected component.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medfail.analysis.per_sample import classification_rows, segmentation_rows
from medfail.analysis.segmentation_calibration import (
    add_pixel_bins,
    image_confidences,
    pixel_bin_table,
    sampling_agreement,
)
from medfail.data.datasets import Dataset
from medfail.data.prompts import Prompt, prompts_from_mask
from medfail.data.sample import Sample
from medfail.engine.evidence import evidence_rows, has_evidence
from medfail.engine.predictions import (
    MapWriter,
    condition_path,
    label_map,
    quantise,
    write_table,
)
from medfail.engine.prefetch import prefetch
from medfail.engine.suite import Condition, SuiteConfig
from medfail.metrics.detection import lesion_counts
from medfail.models.adapters import ModelAdapter
from medfail.rundir import condition_file
from medfail.stress.prompt_perturbations import prompt_table_rows
from medfail.stress.registry import perturb_prompts, perturb_samples
from medfail.uncertainty.postprocess import PostProcess
from medfail.uncertainty.postprocess import apply as apply_postprocess
from medfail.uncertainty.sampling import ensemble_predict, mc_dropout_predict, tta_predict

#: the shift-data condition: clean images of a second dataset
SHIFT = Condition("shift_data", "shift_data", "domain_shift", 1)


def classifier_logits(adapter: ModelAdapter, images: list[np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, logits)`` (N, K) float32 of an ``output="logits"`` classifier: one
    ``predict_proba`` pass (same resizing, batching and output checks) on a copy whose activation
    keeps the raw output, then the adapter's activation of those logits (sigmoid / softmax in
    float32, the probabilities ``predict_proba`` gives on the CPU)."""
    raw = copy.copy(adapter)
    raw.activate = lambda out: out.float()  # type: ignore[method-assign]
    logits = np.asarray(raw.predict_proba(images), np.float32)  # type: ignore[attr-defined]
    return adapter.activate(torch.from_numpy(logits)).numpy(), logits


def takes_spacings(adapter: ModelAdapter) -> bool:
    """Whether the adapter's ``predict_proba`` has a ``spacings`` parameter (segmenters)."""
    try:
        return "spacings" in inspect.signature(adapter.predict_proba).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False


def with_spacings(adapter: ModelAdapter, spacings: Sequence[tuple[float, ...] | None]
                  ) -> ModelAdapter:
    """A shallow copy of ``adapter`` whose ``predict_proba(images)`` passes ``spacings`` (one
    per image, mm per spatial axis); ``adapter`` itself when it takes no spacings."""
    if not takes_spacings(adapter):
        return adapter
    bound = copy.copy(adapter)
    predict = adapter.predict_proba  # type: ignore[attr-defined]
    bound.predict_proba = functools.partial(predict, spacings=list(spacings))  # type: ignore[attr-defined]
    return bound


@dataclass
class Part:
    """Results of consecutive samples of one condition, in sample order."""

    predictions: list[pd.DataFrame] = field(default_factory=list)  # classification rows
    maps: list[tuple[str, np.ndarray]] = field(default_factory=list)  # stored float16 maps
    rows: list[dict[str, Any]] = field(default_factory=list)  # segmentation per-sample rows
    confidence: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    pixel_bins: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)  # engine/evidence.py rows

    def extend(self, other: Part) -> None:
        """Append the results of the samples that follow this part's."""
        self.predictions += other.predictions
        self.maps += other.maps
        self.rows += other.rows
        self.confidence += other.confidence
        self.prompts += other.prompts
        self.evidence += other.evidence
        for key, stats in other.pixel_bins.items():
            self.pixel_bins[key] = self.pixel_bins[key] + stats if key in self.pixel_bins \
                else stats


class ConditionWriter:
    """Writes one condition's ``predictions/`` files from its parts, added in sample order.

    Maps stream to disk as they come; every file is written to a temporary name and renamed.
    """

    def __init__(self, run_dir: Path, cond: Condition, task: str) -> None:
        self.cond = cond
        self.run_dir = run_dir
        self.path = condition_path(run_dir, cond.name, task)
        self.maps = MapWriter(self.path) if task != "classification" else None
        self.results = Part()

    def add(self, part: Part) -> None:
        if self.maps is not None:
            for sid, fg in part.maps:
                self.maps.add(sid, fg)
        self.results.extend(replace(part, maps=[]))

    def close(self) -> pd.DataFrame:
        """Finish the files; returns the condition's per-sample table."""
        res, cond = self.results, self.cond
        if self.maps is None:
            pred = pd.concat(res.predictions, ignore_index=True)
            write_table(pred, self.path)
            per_sample = classification_rows(pred)
        else:
            self.maps.close()
            per_sample = pd.DataFrame(res.rows)
            if res.prompts:
                write_table(pd.DataFrame(res.prompts),
                            condition_file(self.run_dir, cond.name, ".prompts.parquet"))
            write_table(pd.DataFrame(res.confidence),
                        condition_file(self.run_dir, cond.name, ".confidence.parquet"))
            write_table(pixel_bin_table(res.pixel_bins),
                        condition_file(self.run_dir, cond.name, ".pixel_bins.parquet"))
        if has_evidence(cond):
            write_table(pd.DataFrame(res.evidence, columns=["id", "condition", "feature",
                                                            "value"]),
                        condition_file(self.run_dir, cond.name, ".evidence.parquet"))
        for key, value in (("condition", cond.name), ("test", cond.test),
                           ("family", cond.family), ("severity", cond.severity)):
            per_sample[key] = value
        return per_sample

    def abort(self) -> None:
        if self.maps is not None:
            self.maps.abort()


class Predictor:
    """Predicts conditions with ``models[0]`` (the others are deep-ensemble members).

    ``run_dir`` is read only by ``morphology`` conditions (their base's stored predictions).
    """

    def __init__(self, models: Sequence[ModelAdapter], config: SuiteConfig, spacing_mm: bool,
                 run_dir: Path = Path("."), dims: int = 2) -> None:
        self.adapter, self.members = models[0], list(models)
        self.config, self.spacing_mm, self.run_dir = config, spacing_mm, run_dir
        self.task = self.adapter.spec.task
        self.targets = list(self.adapter.spec.target_names)
        self.dims = dims
        #: volumes go one at a time with one read ahead, and each is scored before the next is
        #: predicted: memory is bounded by a few volumes (benchmarks/bench_volumes.py)
        self.batch_size = 1 if dims == 3 else config.batch_size
        self.read_ahead = 1 if dims == 3 else 2
        self.overlap_scoring = dims == 2

    def run(self, cond: Condition, dataset: Dataset, sink: Callable[[Part], None],
            postprocess: PostProcess | None = None, progress: bool = False) -> None:
        """Predict ``cond`` over ``dataset`` batch by batch, giving each batch's part to ``sink``.

        The next batch is read, decoded and perturbed in a background thread meanwhile, and
        (2D images) each batch is scored and given to ``sink`` (maps compressed to disk) in the
        scoring thread while the next one is predicted; ``sink`` sees the parts in order, from
        that one thread.
        """
        bs = self.batch_size
        inputs = ((b, self.images(b, cond)) for b in dataset.batches(bs))
        pending: Future[Part] | None = None
        with closing(prefetch(inputs, depth=self.read_ahead)) as batches, \
                ThreadPoolExecutor(1, thread_name_prefix="medfail-score") as scorer:
            for batch, images in tqdm(batches, total=-(-len(dataset) // bs),
                                      desc=f"  {cond.name}", unit="batch", leave=False,
                                      disable=not progress):
                output = self.forward(batch, images, cond, postprocess)
                if pending is not None:
                    pending.result()  # batch k-1, scored and stored while k was predicted
                pending = scorer.submit(self._score_into, sink, batch, images, cond, output)
                if not self.overlap_scoring:
                    pending.result()
                    pending = None
            if pending is not None:
                pending.result()

    def _score_into(self, sink: Callable[[Part], None], batch: list[Sample],
                    images: list[np.ndarray], cond: Condition,
                    output: tuple[Part, list, list]) -> None:
        sink(self.score(batch, images, cond, output))

    def images(self, batch: list[Sample], cond: Condition) -> list[np.ndarray]:
        src = cond.source
        if src.severity == 0 or src.family == "prompt" or src.test == SHIFT.test:
            return [s.image for s in batch]  # prompt tests and shift data keep the images
        return perturb_samples(batch, src.name, self.config.seed, device=self.adapter.device)

    def predict(self, batch: list[Sample], images: list[np.ndarray], cond: Condition,
                postprocess: PostProcess | None = None) -> Part:
        """One batch's results: :meth:`forward` then :meth:`score`."""
        return self.score(batch, images, cond, self.forward(batch, images, cond, postprocess))

    def forward(self, batch: list[Sample], images: list[np.ndarray], cond: Condition,
                postprocess: PostProcess | None = None) -> tuple[Part, list, list]:
        """The model stage: a part holding what needs no scoring, the outputs and spreads."""
        if self.task == "classification":
            return Part(predictions=[self.classify(batch, images, cond)]), [], []
        part = Part()
        prompts = None
        if self.task == "promptable":
            prompts = [self.prompts(s) for s in batch]
            src = cond.source
            if src.family == "prompt":
                prompts = perturb_prompts(prompts, [s.object_map for s in batch],
                                          [s.id for s in batch], src.name, self.config.seed)
                part.prompts = prompt_table_rows(prompts, [s.id for s in batch], cond.name)
        probs, spreads = self._model_output(batch, images, cond, prompts, postprocess)
        return part, probs, spreads

    def score(self, batch: list[Sample], images: list[np.ndarray], cond: Condition,
              output: tuple[Part, list, list]) -> Part:
        """The scoring stage (segmentation maps → stored maps, confidences, per-sample metrics;
        input-quality evidence); :meth:`run` overlaps it with the next batch's forward pass."""
        part, probs, spreads = output
        if self.task != "classification":
            part = self._segment(batch, part, probs, spreads)
        maps = [fg for _, fg in part.maps] if self.task != "classification" else None
        part.evidence = evidence_rows(batch, images, cond, maps)
        return part

    def _model_output(self, batch: list[Sample], images: list[np.ndarray], cond: Condition,
                      prompts: list[list[Prompt]] | None = None,
                      postprocess: PostProcess | None = None) -> tuple[list[np.ndarray], list]:
        """Predictions by the condition's method, and a per-sample spread (None if plain).

        Segmenters whose ``predict_proba`` takes ``spacings`` get each sample's spacing in mm
        (every method: the flips of TTA keep it), so a model spec's ``spacing`` resamples."""
        ids = [s.id for s in batch]
        adapter, members = self.adapter, self.members
        spaced = self.task == "segmentation" and any(s.spacing is not None for s in batch)
        if spaced:
            spacings = [s.spacing for s in batch]
            adapter, members = (with_spacings(adapter, spacings),
                                [with_spacings(m, spacings) for m in members])
        if cond.method == "tta":
            return tta_predict(adapter, images, prompts)
        if cond.method == "ensemble":
            return ensemble_predict(members, images, prompts)
        if cond.method == "mc_dropout" and spaced:  # passes repeat one image: its spacing too
            draws = [mc_dropout_predict(
                with_spacings(self.adapter, [s.spacing] * self.config.mc_passes), [im], [s.id],
                self.config.seed, self.config.mc_passes, None if prompts is None else [pr])
                for s, im, pr in zip(batch, images, prompts or [None] * len(batch), strict=True)]
            return [d[0][0] for d in draws], [d[1][0] for d in draws]
        if cond.method == "mc_dropout":
            return mc_dropout_predict(adapter, images, ids, self.config.seed,
                                      self.config.mc_passes, prompts)
        if cond.method == "morphology":
            assert postprocess is not None and cond.base is not None
            out = []
            with np.load(condition_path(self.run_dir, cond.base.name, self.task)) as stored:
                for sid in ids:  # lazy: only this batch's maps are read, one at a time
                    fg = apply_postprocess(stored[sid][0].astype(np.float32), postprocess)
                    out.append(np.stack([1.0 - fg, fg]))
            return out, [None] * len(ids)
        if prompts is not None:
            return list(adapter.predict_proba(images, prompts)), [None] * len(ids)
        return list(adapter.predict_proba(images)), [None] * len(ids)

    def classify(self, batch: list[Sample], images: list[np.ndarray],
                 cond: Condition) -> pd.DataFrame:
        """Long prediction rows (``predictions/<condition>.parquet``) of one batch; ``logit`` is
        the model's raw output for plain conditions of ``output="logits"`` models, else NaN."""
        logits = None
        if cond.method == "plain" and self.adapter.spec.output == "logits":
            probs, logits = classifier_logits(self.adapter, images)
            spreads: list = [None] * len(batch)
        else:
            probs_list, spreads = self._model_output(batch, images, cond)
            probs = np.stack(probs_list)
        spread = np.stack([np.full(len(self.targets), np.nan) if sp is None else sp
                           for sp in spreads])
        labels = np.stack([self._one_hot(s) for s in batch])
        k = len(self.targets)
        return pd.DataFrame({
            "id": np.repeat([s.id for s in batch], k), "condition": cond.name,
            "test": cond.test, "family": cond.family, "severity": cond.severity,
            "target": np.tile(self.targets, len(batch)),
            "prob": probs.reshape(-1).astype(np.float64), "label": labels.reshape(-1),
            "spread": spread.reshape(-1).astype(np.float64),
            "logit": np.full(probs.size, np.nan) if logits is None
            else logits.reshape(-1).astype(np.float64)})

    def _one_hot(self, s: Sample) -> np.ndarray:
        label = np.asarray(s.label)
        if self.adapter.spec.multi_label:
            return label.astype(np.int64).reshape(-1)
        return np.eye(len(self.targets), dtype=np.int64)[int(label.reshape(-1)[0])]

    def _segment(self, batch: list[Sample], part: Part, probs: list[np.ndarray],
                 spreads: list) -> Part:
        for s, p, spread in zip(batch, probs, spreads, strict=True):
            fg = quantise(p)
            part.maps.append((s.id, fg))
            for k, target in enumerate(self.targets):
                p = fg[k].astype(np.float32)
                signals = image_confidences(p)
                if spread is not None:
                    signals["sampling_agreement"] = sampling_agreement(p, spread[k + 1])
                part.confidence += [{"id": s.id, "target": target, "signal": name,
                                     "value": value} for name, value in signals.items()]
                add_pixel_bins(part.pixel_bins, target, p, s.mask == k + 1)
            rows = segmentation_rows(
                s.id, fg, s.mask, self.targets, self.config.boundary_tolerance_px,
                spacing=s.spacing if self.spacing_mm else None,
                surface_tolerance=self.config.surface_tolerance_mm,
                min_overlap=self.config.lesion_min_overlap)
            if s.instances is not None:
                self._instance_lesions(rows, s, fg)
            part.rows += rows
        return part

    def _instance_lesions(self, rows: list[dict[str, Any]], s: Sample, fg: np.ndarray) -> None:
        """Recount ``lesion_tp/fn/fp`` in ``rows`` with one GT object per instance of ``s``."""
        pred, inst = label_map(fg), s.instances
        assert inst is not None and s.mask is not None
        for k, target in enumerate(self.targets, start=1):
            counts = lesion_counts((s.mask == k)[None], (pred == k)[None],
                                   self.config.lesion_min_overlap, inst[None])[0]
            values = dict(zip(("lesion_tp", "lesion_fn", "lesion_fp"), counts, strict=True))
            for row in rows:
                if row["target"] == target and row["metric"] in values:
                    row["value"] = float(values[row["metric"]])

    @staticmethod
    def prompts(sample: Sample) -> list[Prompt]:
        """One prompt per ground-truth object (:attr:`Sample.object_map`)."""
        return prompts_from_mask(sample.object_map)
