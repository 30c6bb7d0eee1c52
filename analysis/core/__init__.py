"""The method itself: model + data -> activations -> basis -> edges -> graph -> partitions.

Modules, in the order data flows through them: :mod:`.inputs` (batches), :mod:`.nodes`
(cutting a model into sections), :mod:`.layout` (activation tensors as samples × features),
:mod:`.activations`, :mod:`.gram` (streamed Gram sums),
:mod:`.jacobians` (batched VJPs), :mod:`.rotation` (G, M -> C, Λ), :mod:`.basis`
(:func:`compute_basis`), :mod:`.edges` (:func:`build_graph`), :mod:`.graph`
(:class:`InteractionGraph`), :mod:`.partition` (:func:`find_modules`). Support:
:mod:`.outputs` (which output tensor), :mod:`.survey` (the first forward pass over the cut
points), :mod:`.folding` (bias folding), :mod:`.distributed`, :mod:`.progress`, :mod:`.jsonutil`. Nothing here imports the packages
around it (diagnostics, ablation, report, validation, examples, models) or gRPC.
"""
