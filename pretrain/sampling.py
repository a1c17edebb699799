"""Sampling from trained stacks: the contractive autoencoder's chain and block Gibbs in RBMs.

Contractive auto-encoder sampling (Rifai, Bengio, Dauphin & Vincent 2012). The chain lives on
the top code ``h`` of a stack whose top layer has encoder ``f(x) = s(W x + b)`` and decoder g:

    (1) x_t     = g(h_t)                              the top layer's input (its reconstruction)
    (2) J_t     = df/dx (x_t) = diag(s'(W x_t + b)) W                    (n_hidden, n_visible)
    (3) eps_t   = J_t z,   z ~ N(0, sigma^2 I_{n_visible})    so  eps_t ~ N(0, sigma^2 J_t J_t^T)
    (4) h_{t+1} = f(x_t) + eps_t = f(g(h_t)) + eps_t

The noise moves the code along the directions the encoder is sensitive to, which the
contraction penalty keeps few: the tangent directions of the data manifold. Eq. (3) is
matrix-free: ``J z = s'(a) * (W z)``, one matmul, no (n_hidden, n_visible) matrix per chain.
Each state is decoded down the whole stack to a visible sample, ``r_t = g_1(...g_L(h_t))``.

Block Gibbs sampling of an RBM (``pretrain.rbm`` Eqs. 3, 4, 7, 8): ``h ~ P(h|v)``, then
``v ~ p(v|h)``. A deep belief net's sample (Hinton, Osindero & Teh 2006) runs the Gibbs chain in
the top RBM, whose visible layer is the code of the layers below, then propagates down:

    (5) v_L ~ Gibbs chain of the top RBM;   h_{L-1} = P(v_L = 1 | h_L)  (the mean, not a draw)
    (6) r   = g_1(... g_{L-1}(h_{L-1}))     each g_k the mean P(v|h) of layer k

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
    """Eq. (6): decode a code of the top of ``layers`` to the bottom, means at every layer."""
    for layer in reversed(list(layers)):
        h = layer.decode(h)
    return h


# -- the contractive chain ------------------------------------------------------------------------
def jacobian_noise(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, hidden_unit: str,
                   sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Eq. (3): ``J z`` with ``J = df/dx(x)`` and ``z ~ N(0, sigma^2 I)``, matrix-free.

    Parameters
    ----------
    x : (B, n_visible) points at which the encoder's Jacobian is taken.
    W : (n_hidden, n_visible); b : (n_hidden,); hidden_unit : the encoder's unit.
    sigma : standard deviation of z.
    generator : draws z.

    Returns
    -------
    (B, n_hidden) noise with covariance ``sigma^2 J(x) J(x)^T`` per row.
    """
    check_positive("sigma", sigma, allow_zero=True)
    a = F.linear(x, W, b)  # (B, n_hidden)
    ds = derivative(hidden_unit, a, activation(hidden_unit, a))  # (B, n_hidden): s'(a), Eq. (2)
    z = sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # (B, n_visible)
    return ds * (z @ W.T)  # Eq. (3): diag(s'(a)) W z


def cae_step(layer: Layer, h: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Eqs. (1)-(4): one step ``h <- f(g(h)) + J z`` of the chain on ``layer``'s code; (B, n_hidden)."""
    x = layer.decode(h)  # Eq. (1): (B, n_visible)
    eps = jacobian_noise(x, layer.encoder_weight, layer.encoder_bias, layer.hidden_unit, sigma,
                         generator)  # Eqs. (2)-(3): (B, n_hidden)
    return layer.encode(x) + eps  # Eq. (4)


@torch.no_grad()
def sample_cae(stack, x0: torch.Tensor, *, n_steps: int, sigma: float,
               generator: torch.Generator, thin: int = 1, space: str = "visible") -> torch.Tensor:
    """Run the contractive chain, Eqs. (1)-(4), on the top code of a stack.

    Parameters
    ----------
    stack : a ``pretrain.stack.Stack`` (or a list of layers, bottom-up) whose top layer has an
        encoder ``s(W x + b)`` (any autoencoder; an RBM works too).
    x0 : (n_chains, n_visible) inputs of the stack that start the chains (encoded to h_0).
    n_steps : states kept per chain.
    sigma : the noise scale of Eq. (3) (0 gives the deterministic iteration h <- f(g(h))).
    generator : the only source of randomness.
    thin : chain steps between kept states (1 keeps every step).
    space : ``"visible"`` decodes every kept state down the stack, Eq. (6); ``"code"`` keeps h.

    Returns
    -------
    (n_chains, n_steps, n_visible) samples, or (n_chains, n_steps, n_hidden) codes.

    References
    ----------
    Rifai, Bengio, Dauphin & Vincent, ICML 2012.
    """
    _check_steps(n_steps, thin)
    check_positive("sigma", sigma, allow_zero=True)
    if space not in ("visible", "code"):
        raise ValueError(f"space must be 'visible' or 'code', got {space!r}")
    layers = _layers(stack)
    top = layers[-1]
    h = x0
    for layer in layers:
        h = layer.encode(h)  # (n_chains, n_hidden_top)
    kept = []
    for _ in range(n_steps):
        for _ in range(thin):
            h = cae_step(top, h, sigma, generator)
        kept.append(decode_down(layers, h) if space == "visible" else h)
    return torch.stack(kept, dim=1)


# -- Gibbs sampling of RBMs and deep belief nets ------------------------------------------------------
@torch.no_grad()
def gibbs_chain(W: torch.Tensor, b: torch.Tensor, c: torch.Tensor, v0: torch.Tensor, *, n_steps: int,
                generator: torch.Generator, thin: int = 1, visible: str = "bernoulli",
                sigma: float = 1.0, means: bool = False) -> torch.Tensor:
    """Block Gibbs sampling of an RBM, ``v -> h ~ P(h|v) -> v ~ p(v|h)`` (``pretrain.rbm``).

    Parameters
    ----------
    W : (n_hidden, n_visible); b : (n_hidden,) hidden bias; c : (n_visible,) visible bias.
    v0 : (n_chains, n_visible) starting visible states.
    n_steps : states kept per chain; thin : Gibbs steps between kept states.
    generator : the only source of randomness.
    visible, sigma : the RBM's visible units (``"bernoulli"`` or ``"gaussian"``) and their std.
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
            h = R.sample_h_given_v(v, W, b, generator=generator, visible=visible, sigma=sigma)[2]
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
                       visible=layer.visible, sigma=layer.sigma, means=means)


@torch.no_grad()
def sample_dbn(stack, x0: torch.Tensor, *, n_steps: int, generator: torch.Generator,
               thin: int = 1) -> torch.Tensor:
    """A deep belief net's samples, Eqs. (5)-(6): Gibbs in the top RBM, then means down the stack.

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
                          means=True)  # (n_chains, n_steps, n_top): Eq. (5)
    flat = top_means.reshape(-1, top_means.shape[-1])
    out = decode_down(layers[:-1], flat)  # Eq. (6)
    return out.reshape(top_means.shape[0], n_steps, -1)
