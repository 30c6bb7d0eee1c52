"""Degeneracy diagnostics (paper §3–4): spectra and ranks of G and M, synchronised and dead
neurons, free-direction counts and the rank of the behavioural gradients. Uses the core; the
core never uses it. Entry point :func:`diagnose` (:mod:`.driver`); see its docstring for
the modules behind it."""

from .driver import diagnose
from .plot import plot_spectra
from .results import DegeneracyReport, LayerDiagnostics

__all__ = ["DegeneracyReport", "LayerDiagnostics", "diagnose", "plot_spectra"]
