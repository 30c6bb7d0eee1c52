"""Ablations: the causal test of bases, edges and modules, and the truth-free choice of ε and
of the modules (DESIGN.md §1 "Ablations"). See docs/ablation.md.

Every ablation sets interaction-basis coordinates to 0 (their mean with ``center``; the
constant direction never) and measures the behavioural loss of the output against the clean
output: node ablation curves (:func:`ablation_curve`), edge ablation (:func:`edge_ablation`),
module cut and module ablation (:func:`module_cut`, :func:`module_effects`), ε from ablation
(:func:`epsilon_from_ablation`) and modules from ablation (:func:`modules_from_ablation`).
"""

from .curves import AblationCurve, ablation_curve, ablation_curves
from .edges import EdgeAblation, EpsilonChoice, edge_ablation, epsilon_from_ablation
from .loss import TOLERANCE_SHARE
from .modules import AutoModules, ModuleCut, ModuleEffects, module_cut, module_effects, modules_from_ablation
from .plot import plot_ablation_curves, plot_epsilon_choice, plot_module_effects

__all__ = [
    "AblationCurve", "ablation_curve", "ablation_curves", "EdgeAblation", "EpsilonChoice",
    "edge_ablation", "epsilon_from_ablation", "AutoModules", "ModuleCut", "ModuleEffects",
    "module_cut", "module_effects", "modules_from_ablation", "TOLERANCE_SHARE",
    "plot_ablation_curves", "plot_epsilon_choice", "plot_module_effects",
]
