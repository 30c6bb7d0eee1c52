"""Degeneracy diagnostics (paper §3–4): spectra and ranks of G and M, synchronised neurons,
free-direction counts and the rank of the behavioural gradients. Uses the core; the core
never uses it."""

from .report import DegeneracyReport, LayerDiagnostics, diagnose, plot_spectra

__all__ = ["DegeneracyReport", "LayerDiagnostics", "diagnose", "plot_spectra"]
