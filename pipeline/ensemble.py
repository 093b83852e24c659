"""A variant's seed ensemble: its replicates vote with their class probabilities, averaged.

Numpy only: the served model and evaluate both call it, so what is served is what was measured.
"""

from __future__ import annotations

import numpy as np


def ensemble_probabilities(member_probabilities: list[np.ndarray]) -> np.ndarray:
    """The mean of the members' class probabilities, in the order given (members sorted by seed)."""
    return np.mean(member_probabilities, axis=0)
