"""Tangent propagation: how much a function changes along given tangent directions.

For a function f: R^d -> R^n_out applied row-wise to a batch, an input x and a set of
tangents B_x = {u_1, ..., u_k} (``finetune.tangents``: the leading right singular vectors of
the pretrained stack's Jacobian at x):

    (1) Omega(x) = sum_{u in B_x} || (df/dx)(x) u ||^2                     (Simard et al. 1992)

The manifold tangent classifier adds beta * Omega to the cross-entropy so that the classifier's
output is flat along the manifold's tangents (Rifai et al. 2011, Eq. 10). Which f: the paper
penalises the output o(x), the class probabilities, and so does ``finetune.mtc`` (it passes the
softmax of the logits); passing the logits instead penalises a different quantity (a logit may
move along the manifold without changing o(x)). This module takes f as given.

Each term (df/dx) u of (1) is a Jacobian-vector product, computed in forward mode: one forward
pass of f carrying the k tangents as a batched dual part (``torch.func.jvp`` vmapped over the
k tangents, so the primal f(x) is computed once). Neither the (n_out, d) Jacobian nor k
backward passes are ever formed. The result is differentiable with respect to f's parameters
(reverse over forward), which is what training on Eq. (1) needs.

References
----------
Simard, Victorri, LeCun and Denker, Tangent prop: a formalism for specifying selected
invariances in an adaptive network, NIPS 1992.
Rifai, Dauphin, Vincent, Bengio and Muller, The manifold tangent classifier, NIPS 2011.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import jvp, vmap


def tangent_penalty(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    U: torch.Tensor) -> torch.Tensor:
    """Eq. (1) for every example of a batch.

    Parameters
    ----------
    f : a row-wise function (B, d) -> (B, n_out), e.g. a classifier's class probabilities.
        It must compose with ``torch.func`` (no ``.item()``, no in-place update of captured
        tensors, no batch statistics such as BatchNorm in training mode).
    x : (B, d) inputs.
    U : (B, k, d) tangents of each example (any vectors; orthonormal for the MTC).

    Returns
    -------
    (B,) Omega(x), differentiable with respect to f's parameters (and x, U).
    """
    if x.ndim != 2:
        raise ValueError(f"x must have shape (B, d), got {tuple(x.shape)}")
    if U.ndim != 3 or U.shape[0] != x.shape[0] or U.shape[2] != x.shape[1]:
        raise ValueError(f"U must have shape ({x.shape[0]}, k, {x.shape[1]}) to match x "
                         f"{tuple(x.shape)}, got {tuple(U.shape)}")
    if U.shape[1] == 0:
        return x.new_zeros(x.shape[0])

    def directional(u: torch.Tensor) -> torch.Tensor:  # u (B, d) -> (df/dx)(x) u (B, n_out)
        return jvp(f, (x,), (u.to(x.dtype),))[1]

    Ju = vmap(directional, in_dims=1, out_dims=1)(U)  # (B, k, n_out)
    if Ju.ndim != 3:
        raise ValueError(f"f must map (B, d) to (B, n_out); it returned {Ju.ndim - 1} dimensions")
    return (Ju * Ju).sum((1, 2))  # Eq. (1)
