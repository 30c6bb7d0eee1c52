"""The study's shared parameters: the noise scale, the γ and ε grids, the bases compared."""

from __future__ import annotations

import numpy as np

EPSILON = 1e-4                           # noise scale ε of every table unless said otherwise
RESOLUTIONS = np.logspace(-3, 1.5, 28)   # γ of every resolution sweep
EPS_GRID = np.logspace(-8, -1, 8)        # ε of the "dependence on ε" sweep
N_BOOT = 8                               # bootstrap resamples of noise_epsilon
BASES = (("neuron", "output"), ("pca", "output"), ("interaction", "output"),
         ("interaction", "next_layer"))  # (kind, jacobian_target) of each compared basis
LABEL = {("neuron", "output"): "neuron", ("pca", "output"): "PCA",
         ("interaction", "output"): "interaction (output)",
         ("interaction", "next_layer"): "interaction (next layer)"}
