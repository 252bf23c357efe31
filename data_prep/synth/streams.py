"""Cheap, deterministic random streams keyed by integers (one per sample, identity, texture...).

A face draws a few dozen scalars from each of several independent streams. numpy's
``default_rng([...])`` costs ~30 us to seed and ~2 us per scalar draw, more than the arithmetic
that uses them; Python's Mersenne Twister seeded from a string key costs ~6 us and ~0.1 us per
draw. Only ``random.Random.random`` (and string seeding) is guaranteed to give the same sequence
across Python versions, so every other distribution here is built from it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


class Stream:
    """Random stream determined by its key (any ints, e.g. ``Stream(seed, index, TAG)``)."""

    def __init__(self, *key: int):
        self._random = random.Random("pacofr-synth/" + "/".join(str(int(k)) for k in key)).random

    def random(self) -> float:
        """Uniform in [0, 1)."""
        return self._random()

    def chance(self, p: float) -> bool:
        return self._random() < p

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self._random()

    def uniforms(self, low: float, high: float, n: int) -> np.ndarray:
        r = self._random
        return low + (high - low) * np.array([r() for _ in range(n)])

    def integer(self, n: int) -> int:
        """Uniform in 0..n-1 (n is small here, so the float's 53 bits make the bias negligible)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return min(int(self._random() * n), n - 1)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(len(options))]

    def normal(self, sd: float = 1.0) -> float:
        """Gaussian with mean 0 (Box-Muller on two uniforms)."""
        u = 1.0 - self._random()  # (0, 1]: log is finite
        return sd * math.sqrt(-2.0 * math.log(u)) * math.cos(2.0 * math.pi * self._random())

    def normals(self, sd: float, n: int) -> np.ndarray:
        return np.array([self.normal(sd) for _ in range(n)])
