"""The validation study (``make validate``): recovery of known modules, the finite-sample
study and its remedies. Uses the core, the examples and the plots; nothing uses it.

The report is :mod:`.report` (its docstring says how to add a section); each section is one
module (:mod:`.bases`, :mod:`.epsilon`, :mod:`.theory`, :mod:`.robustness`, :mod:`.drawings`,
:mod:`.transformers`); the measures are :mod:`.recovery`, the remedies :mod:`.remedies`."""
