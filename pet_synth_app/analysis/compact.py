"""Maps of many subjects held only at the voxels that are used.

At 1 mm MNI (197 x 233 x 189 = 8.7 M voxels) a full float64 volume takes 69 MB, so 75
controls' PET and pseudo-normal PET would take 10 GB; inside the union of their brain
masks (~2 M voxels) their float32 values take ~8 MB a control. The group level keeps
the controls as rows of ``(n, N)`` arrays at the voxels of one bool grid (columns in
C order, as ``volume[voxels]``) and rebuilds a full volume only when one is needed
(``to_volume``, ``Volumes``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def to_volume(values: np.ndarray, voxels: np.ndarray, dtype=None, fill=0) -> np.ndarray:
    """One row of values at the voxels of the bool grid ``voxels`` back on that grid
    (``fill`` elsewhere; ``dtype`` default that of ``values``)."""
    inside = np.asarray(voxels) != 0
    values = np.asarray(values)
    out = np.full(inside.shape, fill, dtype=dtype or values.dtype)
    out[inside] = values
    return out


class Volumes(Sequence[np.ndarray]):
    """A read-only sequence of full volumes, each rebuilt from its row when indexed:
    ``blocks`` are ``(voxels, rows)`` pairs, ``rows`` (n, N) (or a list of (N,) rows) at
    the voxels of the bool grid ``voxels``; the volumes of all blocks follow one another.
    Lets code written for lists of volumes (e.g. ``anomaly.fit``) hold one at a time."""

    def __init__(self, *blocks: tuple[np.ndarray, Sequence[np.ndarray]], dtype=None) -> None:
        self.blocks = [(np.asarray(v) != 0, r) for v, r in blocks]
        self.dtype = dtype

    def __len__(self) -> int:
        return sum(len(r) for _, r in self.blocks)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(i)
        for voxels, rows in self.blocks:
            if j < len(rows):
                return to_volume(rows[j], voxels, self.dtype)
            j -= len(rows)
        raise IndexError(i)

    def __iter__(self) -> Iterator[np.ndarray]:
        for voxels, rows in self.blocks:
            for row in rows:
                yield to_volume(row, voxels, self.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape of the volumes."""
        return self.blocks[0][0].shape


__all__ = ["Volumes", "to_volume"]
