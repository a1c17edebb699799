"""The accuracy defaults of ``finetune.tangents``, free of torch so that the config takes them
as its own defaults without importing it.

m = k + ``OVERSAMPLE`` Krylov vectors, searched in the span of W_1's leading right singular
vectors that holds all but ``RANK_TOL`` of ``||W_1||_F^2`` (``finetune.tangents`` Eq. (9)).
"""

OVERSAMPLE = 10
RANK_TOL = 1e-2
