"""The validation study (``make validate``): recovery of known modules, the finite-sample
study and its remedies. Uses the core, the examples and the plots; nothing uses it."""
