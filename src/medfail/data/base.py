"""Shared streaming behaviour of every dataset: length, iteration and batches over ``ids``."""

from __future__ import annotations

from collections.abc import Iterator

from medfail.data.sample import Sample


class SampleStream:
    """Mixin: subclasses set ``self.ids`` (sorted) and implement ``load(id)``."""

    ids: list[str]

    def load(self, id: str) -> Sample:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Sample]:
        for sid in self.ids:
            yield self.load(sid)

    def batches(self, batch_size: int) -> Iterator[list[Sample]]:
        """Samples in id order, ``batch_size`` at a time (only one batch is held in memory)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self.ids), batch_size):
            yield [self.load(sid) for sid in self.ids[start : start + batch_size]]
