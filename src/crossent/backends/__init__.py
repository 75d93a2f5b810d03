"""Kernel backends: plain functions over 2-D row blocks (see :mod:`crossent.backends.rows`).

Nothing here is imported eagerly: ``rows`` (the contract and its readable reference), ``cpu``
(the fused blocked torch-ops kernel) and ``triton`` (CUDA; the only place Triton is imported)
load when a torch call selects them.
"""
