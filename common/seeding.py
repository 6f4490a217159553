"""The one way seeds are derived: a named stream, the run's seed, and an index (step, problem...).

Every random draw a run makes beyond the base seed itself (the problems of a training stream,
the held-out set, the warm-start solutions, the SFT epoch order, each sampling request's seed)
comes from `seeded_rng(stream, seed, *index)` or `derive_seed(stream, seed, *index)`, so two
draws that should be independent never share a generator and any draw repeats from its
coordinates alone (a resumed run redraws exactly what it would have drawn).

The key is the text `"<stream>:<seed>:<index>:..."`. Python's `random.Random` seeds from a
string through SHA-512, which is stable across processes and Python versions (unlike `hash()`,
salted per process), and distinct stream names give unrelated generators even for the same
seed and index. The shipped held-out set and the tiny models' corpora were made with these
keys, so the format is part of the data: changing it changes what the makers write.
"""

from __future__ import annotations

import random

SEED_RANGE = 2**31
"""Derived seeds lie in [0, 2**31): valid for every sampler and for torch/numpy generators."""


def seeded_rng(stream: str, seed: int, *index: int | str) -> random.Random:
    """A generator for draw `index` of `stream` under the run's `seed`."""
    return random.Random(":".join([stream, str(seed), *map(str, index)]))


def derive_seed(stream: str, seed: int, *index: int | str) -> int:
    """An integer seed for draw `index` of `stream` (e.g. a sampling request's seed)."""
    return seeded_rng(stream, seed, *index).randrange(SEED_RANGE)
