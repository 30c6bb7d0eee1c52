"""intermod: find the modules of a trained neural network in the interaction basis.

Subpackages: :mod:`intermod.analysis` (the science, importable without gRPC),
:mod:`intermod.server` (gRPC service), :mod:`intermod.client` (client and CLI).
"""

__version__ = "0.1.0"
