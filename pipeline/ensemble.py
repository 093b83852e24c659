"""A variant's seed ensemble: its replicates vote with their class probabilities, averaged.

Numpy only: the served model and evaluate both call it, so what is served is what was measured.
"""

from __future__ import annotations

import numpy as np


def ensemble_probabilities(members, features: np.ndarray) -> np.ndarray:
    """The mean of the members' class probabilities for `features` (one compiled call each)."""
    return np.mean([member.predict_on_batch(features) for member in members], axis=0)
