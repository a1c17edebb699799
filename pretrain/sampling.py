"""Sampling from trained stacks: the contractive autoencoder's chain and block Gibbs in RBMs.

Contractive auto-encoder sampling (Rifai, Bengio, Dauphin & Vincent 2012, Algorithm 1). The
chain lives on the input x of a stack's top layer, whose encoder is ``f(x) = s(W x + b)`` (times
a per-unit gain where the layer has one) and whose decoder is g:

    (1) h_t     = f(x_t)                             encode
    (2) J_t     = df/dx (x_t) = diag(s'(W x_t + b)) W                    (n_hidden, n_visible)
    (3) eps_t   ~ N(0, sigma^2 I_{n_hidden})          isotropic noise in code space
    (4) h~_t    = h_t + J_t J_t^T eps_t               so  h~_t - h_t ~ N(0, sigma^2 (J_t J_t^T)^2)
    (5) x_{t+1} = g(h~_t)                             decode

Eq. (4) is, to first order, the code of the input step ``x_t + J_t^T eps_t``: a move along the
right singular vectors v_i of J_t with weights s_i, which the code sees along u_i with weights
s_i^2. The contraction penalty keeps few s_i large, those of the data manifold's tangent plane,
so the chain steps along the manifold and the reconstruction g pulls it back onto it. Eq. (4)
is matrix-free, with ``d = s'(a)`` (B, n_hidden):

    (6) J J^T eps = d * ((d * eps) W W^T)         J^T eps = (d * eps) W: two matmuls

In a stack the chain runs on the top layer (x is the code of the layers below) and each state
is decoded down the rest of the stack to a visible sample, ``r_t = g_1(...g_{L-1}(x_t))``, as
Bengio, Mesnil, Dauphin & Rifai (2013) sample a 2-layer CAE in its first layer's code space.

Block Gibbs sampling of an RBM (``pretrain.rbm`` Eqs. 3, 4, 7, 8): ``h ~ P(h|v)``, then
``v ~ p(v|h)``. A deep belief net's sample (Hinton, Osindero & Teh 2006) runs the Gibbs chain in
the top RBM, whose visible layer is the code of the layers below, then propagates down:

    (7) v_L ~ Gibbs chain of the top RBM;   h_{L-1} = P(v_L = 1 | h_L)  (the mean, not a draw)
    (8) r   = g_1(... g_{L-1}(h_{L-1}))     each g_k the mean P(v|h) of layer k

All randomness comes from the ``torch.Generator`` passed in; the same generator state gives
the same chains.

References
----------
Rifai, Bengio, Dauphin & Vincent, A generative process for sampling contractive auto-encoders,
ICML 2012.
Hinton, Osindero & Teh, A fast learning algorithm for deep belief nets, Neural Comp. 2006.
Bengio, Mesnil, Dauphin & Rifai, Better mixing via deep representations, ICML 2013.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from pretrain import rbm as R
from pretrain.checks import check_int, check_positive
from pretrain.layer import Layer
from pretrain.units import activation, derivative


def _check_steps(n_steps: int, thin: int) -> None:
    check_int("n_steps", n_steps, 1)
    check_int("thin", thin, 1)


def _layers(stack) -> list[Layer]:
    layers = list(stack)
    if not layers:
        raise ValueError("sampling needs at least one layer")
    return layers


def decode_down(layers: Sequence[Layer], h: torch.Tensor) -> torch.Tensor:
    """Eq. (8): decode a code of the top of ``layers`` to the bottom, means at every layer."""
    for layer in reversed(list(layers)):
        h = layer.decode(h)
    return h


# -- the contractive chain ------------------------------------------------------------------------
def jacobian_gain(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """Eq. (2)'s diagonal ``d = s'(W x + b)`` (times the layer's gain, if any): (B, n_hidden)."""
    a = F.linear(x, layer.encoder_weight, layer.encoder_bias)  # (B, n_hidden)
    d = derivative(layer.hidden_unit, a, activation(layer.hidden_unit, a))
    scale = layer.encoder_scale
    return d if scale is None else d * scale


def jjt_noise(d: torch.Tensor, W: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Eq. (6): ``J J^T eps`` for ``J = diag(d) W``, per row, without forming J.

    Parameters
    ----------
    d : (B, n_hidden) the diagonal of Eq. (2); W : (n_hidden, n_visible).
    eps : (B, n_hidden) code-space vectors.

    Returns
    -------
    (B, n_hidden).
    """
    step = (d * eps) @ W  # (B, n_visible): J^T eps, the input-space move
    return d * (step @ W.T)  # (B, n_hidden): J (J^T eps)


def cae_step(layer: Layer, x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Eqs. (1)-(5): one step ``x <- g(f(x) + J J^T eps)`` of the chain on ``layer``'s input.

    Parameters
    ----------
    layer : the layer whose input space the chain lives in.
    x : (B, n_visible) the current states.
    sigma : standard deviation of eps, Eq. (3) (0 gives the deterministic x <- g(f(x))).
    generator : draws eps.

    Returns
    -------
    (B, n_visible) the next states.
    """
    return layer.decode(perturbed_code(layer, x, sigma, generator))  # Eq. (5)


def perturbed_code(layer: Layer, x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Eqs. (1)-(4): ``h~ = f(x) + J(x) J(x)^T eps``, eps ~ N(0, sigma^2 I); (B, n_hidden)."""
    check_positive("sigma", sigma, allow_zero=True)
    h = layer.encode(x)  # Eq. (1): (B, n_hidden)
    d = jacobian_gain(layer, x)  # Eq. (2)
    eps = sigma * torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)  # Eq. (3)
    return h + jjt_noise(d, layer.encoder_weight, eps)  # Eq. (4)


@torch.no_grad()
def sample_cae(stack, x0: torch.Tensor, *, n_steps: int, sigma: float,
               generator: torch.Generator, thin: int = 1) -> torch.Tensor:
    """Run the contractive chain, Eqs. (1)-(5), on the top layer of a stack; decode down.

    Parameters
    ----------
    stack : a ``pretrain.stack.Stack`` (or a list of layers, bottom-up) whose top layer has an
        encoder ``s(W x + b)`` (any autoencoder; an RBM works too).
    x0 : (n_chains, n_visible) inputs of the stack that start the chains (encoded up to the
        top layer's input, x_0).
    n_steps : states kept per chain (x_thin, x_2 thin, ...; x_0 is not kept).
    sigma : the noise scale of Eq. (3).
    generator : the only source of randomness.
    thin : chain steps between kept states (1 keeps every step).

    Returns
    -------
    (n_chains, n_steps, n_visible) samples in the stack's input space.

    References
    ----------
    Rifai, Bengio, Dauphin & Vincent, ICML 2012, Algorithm 1.
    """
    _check_steps(n_steps, thin)
    check_positive("sigma", sigma, allow_zero=True)
    layers = _layers(stack)
    top, below = layers[-1], layers[:-1]
    x = x0
    for layer in below:
        x = layer.encode(x)  # (n_chains, n_visible of the top layer): x_0
    kept = []
    for _ in range(n_steps):
        for _ in range(thin):
            x = cae_step(top, x, sigma, generator)
        kept.append(decode_down(below, x))  # r_t = g_1(...g_{L-1}(x_t))
    return torch.stack(kept, dim=1)


# -- Gibbs sampling of RBMs and deep belief nets ------------------------------------------------------
@torch.no_grad()
def gibbs_chain(W: torch.Tensor, b: torch.Tensor, c: torch.Tensor, v0: torch.Tensor, *, n_steps: int,
                generator: torch.Generator, thin: int = 1, visible: str = "bernoulli",
                sigma: float = 1.0, means: bool = False, hidden: str = "bernoulli") -> torch.Tensor:
    """Block Gibbs sampling of an RBM, ``v -> h ~ P(h|v) -> v ~ p(v|h)`` (``pretrain.rbm``).

    Parameters
    ----------
    W : (n_hidden, n_visible); b : (n_hidden,) hidden bias; c : (n_visible,) visible bias.
    v0 : (n_chains, n_visible) starting visible states.
    n_steps : states kept per chain; thin : Gibbs steps between kept states.
    generator : the only source of randomness.
    visible, sigma : the RBM's visible units (``"bernoulli"`` or ``"gaussian"``) and their std.
    hidden : the RBM's hidden units (``"bernoulli"`` or ``"gaussian"``).
    means : keep, for each state, the mean ``E[v | h]`` of the last half-step instead of the
        sampled v (smoother images; the chain itself still runs on samples).

    Returns
    -------
    (n_chains, n_steps, n_visible) visible states (or their conditional means).
    """
    _check_steps(n_steps, thin)
    v = v0
    kept = []
    for _ in range(n_steps):
        for _ in range(thin):
            h = R.sample_h_given_v(v, W, b, generator=generator, visible=visible, sigma=sigma, hidden=hidden)[2]
            _, mean, v = R.sample_v_given_h(h, W, c, generator=generator, visible=visible, sigma=sigma)
        kept.append(mean if means else v)
    return torch.stack(kept, dim=1)


def rbm_chain(layer, v0: torch.Tensor, *, n_steps: int, generator: torch.Generator, thin: int = 1,
              means: bool = False) -> torch.Tensor:
    """:func:`gibbs_chain` of a ``pretrain.rbm.RBM`` layer: (n_chains, n_steps, n_visible)."""
    if not hasattr(layer, "visible") or not hasattr(layer, "sigma"):
        raise ValueError(f"{getattr(layer, 'layer_name', type(layer).__name__)} is not an RBM: Gibbs "
                         f"sampling needs an RBM layer (use sample_cae for autoencoders)")
    return gibbs_chain(layer.W, layer.b, layer.c, v0, n_steps=n_steps, generator=generator, thin=thin,
                       visible=layer.visible, sigma=layer.sigma, means=means, hidden=layer.hidden)


@torch.no_grad()
def sample_dbn(stack, x0: torch.Tensor, *, n_steps: int, generator: torch.Generator,
               thin: int = 1) -> torch.Tensor:
    """A deep belief net's samples, Eqs. (7)-(8): Gibbs in the top RBM, then means down the stack.

    Parameters
    ----------
    stack : a ``Stack`` (or a list of layers, bottom-up) whose top layer is an RBM; the layers
        below may be of any kind (their ``decode`` is used).
    x0 : (n_chains, n_visible) inputs of the stack; encoded (means) up to the top RBM's visible
        layer to start the chains there.
    n_steps, thin, generator : as in :func:`gibbs_chain`.

    Returns
    -------
    (n_chains, n_steps, n_visible) samples in the stack's input space.

    References
    ----------
    Hinton, Osindero & Teh, Neural Comp. 2006.
    """
    layers = _layers(stack)
    v = x0
    for layer in layers[:-1]:
        v = layer.encode(v)  # (n_chains, n_visible of the top RBM)
    top_means = rbm_chain(layers[-1], v, n_steps=n_steps, generator=generator, thin=thin,
                          means=True)  # (n_chains, n_steps, n_top): Eq. (7)
    flat = top_means.reshape(-1, top_means.shape[-1])
    out = decode_down(layers[:-1], flat)  # Eq. (8)
    return out.reshape(top_means.shape[0], n_steps, -1)
