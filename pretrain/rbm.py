"""Restricted Boltzmann machines: energies, Gibbs sampling, exact and pseudo likelihoods, CD/PCD.

Visible units ``v`` (B, n_visible), hidden units ``h`` (B, n_hidden) in {0, 1}; weights ``W``
(n_hidden, n_visible), hidden bias ``b`` (n_hidden,), visible bias ``c`` (n_visible,): the same
orientation as the layer contract in ``pretrain.layer``. Binary (Bernoulli) visible units:

    (1) E(v, h) = -b.h - c.v - h.W v
    (2) F(v)    = -log sum_h exp(-E(v, h)) = -c.v - sum_j softplus(W_j v + b_j)
    (3) P(h_j = 1 | v) = sigmoid(W_j v + b_j)
    (4) P(v_i = 1 | h) = sigmoid((W^T h)_i + c_i)

Gaussian visible units with a fixed standard deviation ``sigma`` (the input is expected
standardized, zero mean and unit variance per pixel, so ``sigma = 1`` is the usual choice):

    (5) E(v, h) = ||v - c||^2 / (2 sigma^2) - b.h - h.W v / sigma
    (6) F(v)    = ||v - c||^2 / (2 sigma^2) - sum_j softplus(W_j v / sigma + b_j)
    (7) P(h_j = 1 | v) = sigmoid(W_j v / sigma + b_j)
    (8) p(v | h) = Normal(c + sigma W^T h, sigma^2 I)

Likelihoods of tiny models, by enumerating the smaller layer (logsumexp for stability):

    (9)  log Z = logsumexp_v [-F(v)]                                   (enumerate v), or
         log Z = logsumexp_h [b.h + sum_i softplus((W^T h)_i + c_i)]  (enumerate h, binary v)
         log Z = logsumexp_h [b.h + c.W^T h / sigma + ||W^T h||^2 / 2] + n_v/2 log(2 pi sigma^2)
                                                                       (enumerate h, Gaussian v)
    (10) log p(v) = -F(v) - log Z

Pseudo-likelihood (Besag 1975) of binary visible units, ``v~i`` being ``v`` with bit i flipped:

    (11) log PL(v) = sum_i log P(v_i | v_-i) = sum_i log sigmoid(F(v~i) - F(v))
    (12) stochastic estimate: n_visible * log sigmoid(F(v~i) - F(v)), i uniform at random
         (lisa-lab's rbm.py, scikit-learn's ``BernoulliRBM.score_samples``), averaged over
         ``n_flips`` draws per example.

Training (Hinton 2002; Tieleman 2008) minimises the contrastive-divergence surrogate, whose
gradient is the CD-k / PCD-k estimate of the negative log-likelihood gradient:

    (13) L_CD = mean_batch F(v) - mean_batch F(v_k),   v_k held constant (``.detach()``)

where ``v_k`` is the end of a k-step Gibbs chain v -> h -> v' (CD: started at the data;
PCD: persistent chains carried from one update to the next). Its value is not a log-likelihood.
Its gradient is written out rather than taken by autograd, with ``h_0``, ``h_k`` the hidden means
(Eq. 3/7) of v_0 = the data and of v_k, and ``v~ = v / sigma`` (``v`` for binary units, sigma = 1):

    (17) dL_CD/dW = (h_k^T v~_k - h_0^T v~_0) / B = G^T [v~_0; v~_k],  G = [-h_0; h_k] / B   (2B, n_hidden)
         dL_CD/db = mean_batch h_k - mean_batch h_0,    dL_CD/dc = (mean_batch v_k - mean_batch v_0) / sigma^2

so an update costs five products of B x n_visible x n_hidden: the up pass of the data, the down
and up passes of each Gibbs step (k = 1), and the weight gradient of both halves in one
(n_hidden x 2B) x (2B x n_visible) product.

Gaussian hidden units (linear, unit variance: the 30-unit code layer of Hinton & Salakhutdinov
2006), binary visible units, ``a = W v + b``:

    (18) E(v, h) = -c.v + ||h - b||^2 / 2 - h.W v,   h real
    (19) F(v)    = -c.v - sum_j (a_j^2 - b_j^2) / 2 - (n_hidden / 2) log(2 pi)
    (20) p(h | v) = Normal(a, I), so E[h | v] = a; P(v_i = 1 | h) is Eq. (4) with real h

Eq. (17) holds with h_0, h_k the means of Eq. (20): dF/dW_j = -a_j v, and dF/db_j = -(a_j - b_j),
whose b_j cancels between the two means of Eq. (13). Exact ``log Z`` enumerates v (Eq. 9, first
form, with F from Eq. 19). A Gaussian-Gaussian RBM is normalisable only for small W and is refused.

Centring (Montavon and Mueller 2012; Melchior, Fischer and Wiskott 2016), binary units: the same
model written with offsets mu (visible) and lambda (hidden),

    (14) E(v, h) = -c_o.(v - mu) - b_o.(h - lambda) - (h - lambda).W (v - mu)
         which is Eq. (1) with b = b_o - W mu and c = c_o - W^T lambda,

is trained by gradient steps on (W, b_o, c_o) instead of (W, b, c). With the CD estimates
G_W = <h v^T>_0 - <h v^T>_k, G_b = <h>_0 - <h>_k, G_c = <v>_0 - <v>_k (h the hidden means):

    (15) G_W^o = <(h - lambda)(v - mu)^T>_0 - <(h - lambda)(v - mu)^T>_k
               = G_W - lambda G_c^T - G_b mu^T
    (16) a step of eta along (G_W^o, G_b, G_c) in the centred coordinates moves the uncentred ones by
         dW = eta G_W^o,  db = eta (G_b - G_W^o mu),  dc = eta (G_c - G_W^o^T lambda)

so the layer keeps (W, b, c) (every formula above, ``encode`` and ``decode`` unchanged) and only
its gradients are replaced by (16) before each optimizer step. The offsets are running means
of the data and of its hidden means, mu <- (1 - nu) mu + nu <v>_0 and lambda <- (1 - nu) lambda +
nu <h>_0 (nu = ``centring_rate``, mu starting at the first batch's mean, lambda at 1/2), updated
after each step; moving them changes no parameter and so not the model. The centred gradient is
invariant to flipping units (v -> 1 - v), which the plain one is not: on data far from 1/2 on
average (a dark digit on a bright random background) the plain RBM's updates are dominated by
the mean.

References
----------
Hinton, Training products of experts by minimizing contrastive divergence, Neural Comp. 2002.
Tieleman, Training RBMs using approximations to the likelihood gradient, ICML 2008.
Hinton, A practical guide to training restricted Boltzmann machines, UTML TR 2010-003.
Besag, Statistical analysis of non-lattice data, The Statistician 1975.
Montavon and Mueller, Deep Boltzmann machines and the centering trick, LNCS 7700, 2012.
Melchior, Fischer and Wiskott, How to center deep Boltzmann machines, JMLR 17(99), 2016.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pretrain.checks import check_bool, check_choice, check_int, check_positive, check_probability
from pretrain.layer import Layer
from pretrain.module import OBJECTIVE, fused_kernel, scales_gradient
from pretrain.names import RBM_HIDDEN

VISIBLE = ("bernoulli", "gaussian")
MAX_ENUMERATED_UNITS = 20


def _check_visible(visible: str) -> str:
    return check_choice("visible", visible, VISIBLE)


def _check_hidden(hidden: str, visible: str = "bernoulli") -> str:
    check_choice("hidden", hidden, RBM_HIDDEN)
    if hidden == "gaussian" and visible != "bernoulli":
        raise ValueError("hidden='gaussian' needs binary (visible='bernoulli') units: a Gaussian-Gaussian "
                         "RBM has a normalisable density only for small weights; use one Gaussian layer")
    return hidden


def _hidden_term(a: torch.Tensor, b: torch.Tensor, hidden: str) -> torch.Tensor:
    """The hidden part of -F(v), summed over the last axis of ``a = W v~ + b`` (..., n_hidden):
    ``sum_j softplus(a_j)`` (Eq. 2/6) or Eq. (19)'s ``sum_j (a_j^2 - b_j^2) / 2 + (n / 2) log(2 pi)``."""
    if hidden == "bernoulli":
        return F.softplus(a).sum(-1)  # log(1 + e^a) without overflow for large a
    n_hidden = a.shape[-1]
    return 0.5 * (a * a - b * b).sum(-1) + 0.5 * n_hidden * math.log(2 * math.pi)  # Eq. (19)


def _hidden_mean(a: torch.Tensor, hidden: str) -> torch.Tensor:
    """E[h | v] from the pre-activation: sigmoid(a) (Eq. 3/7) or a itself (Eq. 20)."""
    return torch.sigmoid(a) if hidden == "bernoulli" else a


def _scaled(v: torch.Tensor, visible: str, sigma: float) -> torch.Tensor:
    """The visible input the hidden units see: ``v / sigma`` for Gaussian units, else ``v``."""
    return v / sigma if visible == "gaussian" and sigma != 1.0 else v


def _visible_term(v: torch.Tensor, c: torch.Tensor, visible: str, sigma: float) -> torch.Tensor:
    """The visible part of Eq. (2)/(6): ``-c.v`` or ``||v - c||^2 / (2 sigma^2)``, shape (B,)."""
    if _check_visible(visible) == "bernoulli":
        return -(v @ c)
    return 0.5 * ((v - c) ** 2).sum(1) / sigma**2


def _free_energy_from(v, a, b, c, visible, sigma, hidden="bernoulli"):
    """Eq. (2)/(6)/(19) from the hidden pre-activation ``a = W v~ + b`` (B, n_hidden) already at hand."""
    return _visible_term(v, c, visible, sigma) - _hidden_term(a, b, hidden)


def free_energy(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                visible: str = "bernoulli", sigma: float = 1.0, hidden: str = "bernoulli") -> torch.Tensor:
    """Free energy ``F(v)`` of each row, Eq. (2) (binary), Eq. (6) (Gaussian visible) or Eq. (19)
    (Gaussian hidden).

    Parameters
    ----------
    v : (B, n_visible) visible vectors.
    W : (n_hidden, n_visible) weights; b : (n_hidden,) hidden bias; c : (n_visible,) visible bias.
    visible : ``"bernoulli"`` or ``"gaussian"``; sigma : the Gaussian units' standard deviation.
    hidden : ``"bernoulli"`` or ``"gaussian"`` (linear, unit variance; binary visible units only).

    Returns
    -------
    (B,) free energies.
    """
    _check_hidden(hidden, visible)
    a = F.linear(_scaled(v, visible, sigma), W, b)  # (B, n_hidden)
    return _free_energy_from(v, a, b, c, visible, sigma, hidden)  # Eq. (2)/(6)/(19)


def energy(v: torch.Tensor, h: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
           visible: str = "bernoulli", sigma: float = 1.0, hidden: str = "bernoulli") -> torch.Tensor:
    """Joint energy ``E(v, h)`` of each row pair, Eq. (1), (5) or (18); shape (B,)."""
    interaction = (F.linear(_scaled(v, visible, sigma), W) * h).sum(1)  # h.W v (/ sigma)
    if _check_hidden(hidden, visible) == "gaussian":
        return -(v @ c) + 0.5 * ((h - b) ** 2).sum(1) - interaction  # Eq. (18)
    return _visible_term(v, c, visible, sigma) - h @ b - interaction  # Eq. (1)/(5)


# -- conditionals and Gibbs sampling (names after lisa-lab's rbm.py) ------------------------------
def propup(v, W, b, visible="bernoulli", sigma=1.0, hidden="bernoulli"):
    """Hidden pre-activation and mean E[h|v], Eq. (3)/(7)/(20): ``(a, sigmoid(a))`` (binary hidden
    units) or ``(a, a)`` (Gaussian), each (B, n_hidden)."""
    a = F.linear(_scaled(v, visible, sigma), W, b)  # (B, n_hidden)
    return a, _hidden_mean(a, hidden)  # Eq. (3)/(7)/(20)


def propdown(h, W, c, visible="bernoulli", sigma=1.0):
    """Visible pre-activation and mean, Eq. (4)/(8): ``(a, mean)``, each (B, n_visible).

    Binary units: mean = sigmoid(W^T h + c); Gaussian: mean = c + sigma W^T h (= the pre-activation).
    """
    if _check_visible(visible) == "bernoulli":
        a = torch.addmm(c, h, W)  # (B, n_visible): c + h W
        return a, torch.sigmoid(a)  # Eq. (4)
    a = torch.addmm(c, h, W, alpha=sigma)  # Eq. (8): c + sigma h W
    return a, a


def _bernoulli(p: torch.Tensor, generator) -> torch.Tensor:
    # uniform-then-compare, in place: cheaper than torch.bernoulli on CPU, same law
    return torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype).lt_(p)


def _sample_hidden(mean: torch.Tensor, hidden: str, generator) -> torch.Tensor:
    """h ~ P(h|v) from its mean: Bernoulli (Eq. 3/7) or Normal(mean, 1) (Eq. 20)."""
    if hidden == "bernoulli":
        return _bernoulli(mean, generator)
    return torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype).add_(mean)


def sample_h_given_v(v, W, b, *, generator, visible="bernoulli", sigma=1.0, hidden="bernoulli"):
    """One draw of h ~ P(h|v), Eq. (3)/(7)/(20), from the seeded ``torch.Generator`` ``generator``.

    Returns
    -------
    ``(a, mean, h)``: pre-activation, E[h|v] and a sample (binary, or real for Gaussian hidden
    units), each (B, n_hidden).
    """
    a, mean = propup(v, W, b, visible, sigma, hidden)
    return a, mean, _sample_hidden(mean, hidden, generator)


def sample_v_given_h(h, W, c, *, generator, visible="bernoulli", sigma=1.0):
    """One draw of v ~ p(v|h), Eq. (4) (binary) or Eq. (8) (Gaussian), from ``generator``.

    Returns
    -------
    ``(a, mean, v)``: pre-activation, mean and sample, each (B, n_visible).
    """
    a, mean = propdown(h, W, c, visible, sigma)
    if visible == "bernoulli":
        return a, mean, _bernoulli(mean, generator)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return a, mean, mean + sigma * noise


def gibbs_step(v, W, b, c, *, generator, visible="bernoulli", sigma=1.0, hidden="bernoulli"):
    """One Gibbs step v -> h ~ P(h|v) -> v' ~ p(v|h) (lisa-lab's ``gibbs_vhv``); returns v' (B, n_visible)."""
    _, _, h = sample_h_given_v(v, W, b, generator=generator, visible=visible, sigma=sigma, hidden=hidden)
    return sample_v_given_h(h, W, c, generator=generator, visible=visible, sigma=sigma)[2]


# -- likelihoods ----------------------------------------------------------------------------------
def _all_states(n: int, like: torch.Tensor) -> torch.Tensor:
    """All 2^n binary vectors as rows, (2^n, n), in the dtype and device of ``like``."""
    codes = torch.arange(2**n, device=like.device)
    bits = 2 ** torch.arange(n - 1, -1, -1, device=like.device)
    return ((codes[:, None] & bits) > 0).to(like.dtype)


def log_partition(W: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                  visible: str = "bernoulli", sigma: float = 1.0, hidden: str = "bernoulli") -> torch.Tensor:
    """Exact ``log Z`` of a tiny RBM, Eq. (9), by enumerating the smaller layer.

    Binary visible units enumerate min(n_visible, n_hidden) units; Gaussian visible units
    integrate v out analytically and enumerate the hidden layer; Gaussian hidden units are
    integrated out (Eq. 19) and the visible layer enumerated. More than 20 enumerated units
    (a million states) is refused.

    Returns
    -------
    0-dim tensor ``log Z``.
    """
    n_hidden, n_visible = W.shape
    gaussian_h = _check_hidden(hidden, _check_visible(visible)) == "gaussian"
    enumerate_h = not gaussian_h and (visible == "gaussian" or n_hidden <= n_visible)
    n = n_hidden if enumerate_h else n_visible
    if n > MAX_ENUMERATED_UNITS:
        layer = "hidden" if enumerate_h else "visible"
        raise ValueError(
            f"log_partition enumerates 2^{n} {layer} states; refusing more than "
            f"{MAX_ENUMERATED_UNITS} units (n_visible={n_visible}, n_hidden={n_hidden}). "
            f"Exact likelihoods are for tiny models only; use pseudo_likelihood instead.")
    if not enumerate_h:
        return torch.logsumexp(-free_energy(_all_states(n, W), W, b, c, hidden=hidden), 0)  # Eq. (9)
    h = _all_states(n, W)  # (2^n, n_hidden)
    u = h @ W  # (2^n, n_visible): W^T h
    if visible == "bernoulli":
        return torch.logsumexp(h @ b + F.softplus(u + c).sum(1), 0)  # Eq. (9)
    log_gauss = 0.5 * n_visible * math.log(2 * math.pi * sigma**2)
    return torch.logsumexp(h @ b + u @ c / sigma + 0.5 * (u * u).sum(1), 0) + log_gauss  # Eq. (9)


def log_likelihood(v, W, b, c, visible="bernoulli", sigma=1.0, log_z=None, hidden="bernoulli") -> torch.Tensor:
    """Exact ``log p(v)`` of each row, Eq. (10), for tiny models; (B,).

    ``log_z`` (from :func:`log_partition`) may be passed to avoid enumerating again.
    """
    if log_z is None:
        log_z = log_partition(W, b, c, visible, sigma, hidden)
    return -free_energy(v, W, b, c, visible, sigma, hidden) - log_z  # Eq. (10)


def pseudo_likelihood(v, W, b, c, generator=None, n_flips=None, chunk_elements=2**21, hidden="bernoulli"):
    """Log pseudo-likelihood of binary visible vectors, Eq. (11) exact or Eq. (12) stochastic.

    Parameters
    ----------
    v : (B, n_visible) binary vectors.
    generator : ``torch.Generator`` drawing the flipped bits; required when ``n_flips`` is given.
    n_flips : None for the exact sum over all n_visible bits, Eq. (11); an int m for the
        stochastic estimate, Eq. (12): m bits per example drawn uniformly (with replacement),
        ``n_visible * mean_m log sigmoid(F(v~i) - F(v))``, unbiased for Eq. (11).
    chunk_elements : the exact sum builds (rows, n_visible, n_hidden) pre-activations in
        chunks of at most this many elements (8 MB in float32 by default: small enough to be
        reused by the allocator instead of mapped afresh for each chunk).
    hidden : ``"bernoulli"`` or ``"gaussian"`` hidden units (F from Eq. 2 or Eq. 19).

    Returns
    -------
    (B,) log pseudo-likelihoods.

    References
    ----------
    Besag 1975; Marlin et al., Inductive principles for RBM learning, AISTATS 2010.
    """
    B, n_visible = v.shape
    _check_hidden(hidden)
    a = F.linear(v, W, b)  # (B, n_hidden)
    fe = _free_energy_from(v, a, b, c, "bernoulli", 1.0, hidden)  # (B,)
    d = 1.0 - 2.0 * v  # (B, n_visible): change of each bit when flipped
    if n_flips is None:
        out = []
        rows = max(1, chunk_elements // (n_visible * W.shape[0]))
        for s in range(0, B, rows):
            # flipping bit i adds d_i to v_i: F(v~i) = -c.v - d_i c_i - hidden term(a + d_i W_:i)
            a_flip = a[s:s + rows, None, :] + d[s:s + rows, :, None] * W.T  # (b, n_visible, n_hidden)
            fe_flip = (-(v[s:s + rows] @ c)[:, None] - d[s:s + rows] * c
                       - _hidden_term(a_flip, b, hidden))  # (b, n_visible)
            out.append(F.logsigmoid(fe_flip - fe[s:s + rows, None]).sum(1))  # Eq. (11)
        return torch.cat(out)
    if generator is None:
        raise ValueError("pseudo_likelihood with n_flips needs a seeded torch.Generator (generator=...)")
    if int(n_flips) < 1:
        raise ValueError(f"n_flips must be >= 1 or None, got {n_flips!r}")
    i = torch.randint(n_visible, (B, int(n_flips)), generator=generator, device=v.device)  # (B, m)
    d_i = d.gather(1, i)  # (B, m)
    a_flip = a[:, None, :] + d_i[:, :, None] * W.T[i]  # (B, m, n_hidden)
    fe_flip = -(v @ c)[:, None] - d_i * c[i] - _hidden_term(a_flip, b, hidden)  # (B, m)
    return n_visible * F.logsigmoid(fe_flip - fe[:, None]).mean(1)  # Eq. (12)


def centred_gradients(gW: torch.Tensor, gb: torch.Tensor, gc: torch.Tensor, mu: torch.Tensor,
                      lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. (15)-(16): the gradients (gW (n_hidden, n_visible), gb (n_hidden,), gc (n_visible,)) of
    a loss in the uncentred parameters -> the uncentred move of a step on the centred ones, with
    visible offset ``mu`` and hidden offset ``lam``. Linear, so it holds for -G as for G."""
    gW_o = torch.addr(gW, lam, gc, alpha=-1).addr_(gb, mu, alpha=-1)  # Eq. (15), one new matrix
    return gW_o, gb - gW_o @ mu, gc - gW_o.T @ lam  # Eq. (16)


# -- the layer ------------------------------------------------------------------------------------
class _ContrastiveDivergence(torch.autograd.Function):
    """The surrogate Eq. (13) with its gradient Eq. (17) attached: ``G = [-h_0; h_k] / B``,
    the (scaled) visible vectors of the data and of the chain end, and the bias gradients come
    from the forward computation; the weight gradient's product is formed only when a backward
    pass asks for it (validation never pays). ``value`` is the surrogate's value, or on an
    unmonitored step a scalar finite exactly when the bias gradients are."""

    @staticmethod
    def forward(ctx, value, G, u_scaled, g_b, g_c, W, b, c):
        ctx.parts = (G, u_scaled, g_b, g_c)
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, scale):
        G, u_scaled, g_b, g_c = ctx.parts  # (2B, n_hidden), (2B, n_visible), (n_hidden,), (n_visible,)
        if scales_gradient(scale):
            G, g_b, g_c = G * scale, g_b * scale, g_c * scale
        return None, None, None, None, None, G.T @ u_scaled, g_b, g_c


class RBM(Layer):
    """A restricted Boltzmann machine trained by CD-k or PCD-k, keeping the layer contract.

    ``encode(v) = E[h|v]`` (Eq. 3/7/20) and ``decode(h)`` = P(v=1|h) or the Gaussian mean
    (Eq. 4/8); the weights are tied (decoder weight W^T). Training minimises Eq. (13) with the
    gradient of Eq. (17), in Lightning's manual optimization (``training_step`` takes the step);
    SGD with momentum and weight decay follows Hinton's guide (2010): W ~ N(0, 0.01^2), zero
    biases, momentum 0.5 switched to ``final_momentum`` at epoch ``momentum_switch_epoch`` (in
    ``on_train_epoch_start``), weight decay on W only (not on the biases).

    Parameters
    ----------
    n_visible, n_hidden : layer sizes (>= 1).
    visible : ``"bernoulli"`` (inputs in [0, 1]) or ``"gaussian"`` (inputs standardized).
    hidden : ``"bernoulli"`` (binary, ``hidden_unit`` sigmoid) or ``"gaussian"`` (linear units
        with unit-variance noise, Eqs. 18-20, ``hidden_unit`` linear: a real-valued code, with
        binary visible units only; Hinton & Salakhutdinov train it at a learning rate 100 times
        smaller, 0.001).
    k : Gibbs steps per update (>= 1).
    persistent : False for CD-k (chains start at the data), True for PCD-k (Tieleman 2008):
        visible chains kept in the buffer ``chains`` (so checkpointed), (batch size, n_visible),
        created from the first training batch and advanced k steps per update; a smaller last
        batch uses and advances the first rows. Validation never advances them.
    lr, momentum, weight_decay : SGD settings; ``final_momentum``, ``momentum_switch_epoch``.
    sigma : standard deviation of Gaussian visible units (ignored for binary units).
    centred : train by the centred gradient, Eqs. (14)-(16) (binary units only: a Gaussian
        RBM's standardized inputs are centred already). The offsets are the buffers
        ``offset_v`` and ``offset_h``, checkpointed with the weights.
    centring_rate : nu, the offsets' running-mean rate, in (0, 1].
    seed : seeds the weight init; the Gibbs chains use ``seed + 1``, validation's
        pseudo-likelihood ``seed + 2`` (reset each validation epoch).

    References
    ----------
    Hinton 2002; Tieleman 2008; Hinton 2010 (practical guide); lisa-lab DeepLearningTutorials rbm.py;
    Hinton & Salakhutdinov, Reducing the dimensionality of data with neural networks, Science 2006.
    """

    #: a Trainer's training steps compute the monitoring-only terms on batches 0, m, 2m, ... of
    #: each epoch only: ``rec`` (one more down pass: a sixth matmul beside the five of a CD-1
    #: update) and the value of the surrogate Eq. (13), ``loss`` (two free energies: a tenth of an
    #: update's time on a CPU core, for a number that is no log-likelihood); ``train/rec`` and
    #: ``train/loss`` are their means over those batches. The update is the same on every batch.
    #: Validation and ``loss_terms`` always compute both.
    monitor_every = 10
    #: minibatches a Trainer's step takes (``pretrain.module.Block``): the same updates as one a
    #: step, with Lightning's per-step work (hooks, progress, fetching: some 0.3 ms on a CPU core,
    #: beside 5 ms for a 784-500 CD-1 update) paid once per block
    updates_per_step = 10

    def __init__(self, n_visible: int, n_hidden: int, *, visible: str = "bernoulli",
                 hidden: str = "bernoulli", k: int = 1,
                 persistent: bool = False, lr: float = 0.1, momentum: float = 0.5,
                 weight_decay: float = 2e-4, sigma: float = 1.0, final_momentum: float = 0.9,
                 momentum_switch_epoch: int = 5, centred: bool = False, centring_rate: float = 0.01,
                 seed: int = 0):
        super().__init__(lr=lr, optimizer="sgd", momentum=momentum, weight_decay=weight_decay)
        n_visible, n_hidden = check_int("n_visible", n_visible, 1), check_int("n_hidden", n_hidden, 1)
        _check_hidden(hidden, _check_visible(visible))
        k = check_int("k", k, 1)
        check_positive("sigma", sigma)
        check_probability("final_momentum", final_momentum)
        momentum_switch_epoch = check_int("momentum_switch_epoch", momentum_switch_epoch, 0)
        seed = check_int("seed", seed, 0)
        check_bool("centred", centred)
        if centred and (visible != "bernoulli" or hidden != "bernoulli"):
            raise ValueError("centred=True needs binary units (visible='bernoulli', hidden='bernoulli'): "
                             "a Gaussian layer is centred already; drop centred or use binary units")
        check_probability("centring_rate", centring_rate)
        if centring_rate == 0:
            raise ValueError("centring_rate must be in (0, 1], got 0 (the offsets would never move)")
        self.save_hyperparameters()
        self.visible_unit = "sigmoid" if visible == "bernoulli" else "linear"
        self.hidden_unit = "sigmoid" if hidden == "bernoulli" else "linear"  # E[h|v] of Eq. (3)/(20)
        self.hidden = hidden
        self.visible, self.k, self.persistent, self.sigma, self.seed = visible, k, persistent, sigma, seed
        init = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(0.01 * torch.randn(n_hidden, n_visible, generator=init))
        self.b = torch.nn.Parameter(torch.zeros(n_hidden))  # hidden bias
        self.c = torch.nn.Parameter(torch.zeros(n_visible))  # visible bias
        self.register_buffer("chains", torch.empty(0, n_visible))  # PCD's visible chains
        self.centred = centred
        if centred:  # Eq. (14)'s offsets (an uncentred RBM's state has none): mu is empty until
            self.register_buffer("offset_v", torch.empty(0))  # the first training batch sets it
            self.register_buffer("offset_h", torch.full((n_hidden,), 0.5))
        self._batch_means: tuple[torch.Tensor, torch.Tensor] | None = None
        # one closed-form gradient a step: Lightning's automatic loop (closure, hooks around an
        # autograd pass) would cost a third of a 784-500 update on a CPU core
        self.automatic_optimization = False

    # -- the contract ---------------------------------------------------------------------------
    def encode(self, x):  # (B, n_visible) -> (B, n_hidden), Eq. (3)/(7)/(20)
        return propup(x, self.W, self.b, self.visible, self.sigma, self.hidden)[1]

    def decode(self, h):  # (B, n_hidden) -> (B, n_visible), Eq. (4)/(8)
        return propdown(h, self.W, self.c, self.visible, self.sigma)[1]

    @property
    def encoder_weight(self):  # W / sigma for Gaussian units, so that encode = sigmoid(W' x + b)
        return self.W if self.visible == "bernoulli" or self.sigma == 1.0 else self.W / self.sigma

    @property
    def encoder_bias(self):
        return self.b

    @property
    def decoder_weight(self):  # (n_visible, n_hidden): W^T (times sigma for Gaussian units)
        return self.W.T if self.visible == "bernoulli" or self.sigma == 1.0 else self.sigma * self.W.T

    @property
    def decoder_bias(self):
        return self.c

    # -- energies of this model -----------------------------------------------------------------
    def free_energy(self, v):  # (B,), Eq. (2)/(6)/(19)
        return free_energy(v, self.W, self.b, self.c, self.visible, self.sigma, self.hidden)

    def pseudo_likelihood(self, v, generator=None, n_flips=None):  # (B,), Eq. (11)/(12)
        self._require_bernoulli("pseudo_likelihood")
        return pseudo_likelihood(v, self.W, self.b, self.c, generator, n_flips, hidden=self.hidden)

    def log_partition(self):  # Eq. (9)
        return log_partition(self.W, self.b, self.c, self.visible, self.sigma, self.hidden)

    def log_likelihood(self, v, log_z=None):  # (B,), Eq. (10)
        return log_likelihood(v, self.W, self.b, self.c, self.visible, self.sigma, log_z, self.hidden)

    def _require_bernoulli(self, what):
        if self.visible != "bernoulli":
            raise ValueError(f"{what} is defined for binary visible units; this RBM has visible={self.visible!r}")

    # -- training -------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.hparams.n_visible:
            raise ValueError(f"{self.layer_name}: expected input of shape (B, {self.hparams.n_visible}), "
                             f"got {tuple(x.shape)}")
        if self.visible == "bernoulli":
            self.check_unit_interval(x, "a Bernoulli RBM", "rescale the data to [0, 1], or use "
                                     "visible='gaussian' with standardized inputs")

    def step_terms(self, x: torch.Tensor, stage: str, batch_idx: int) -> dict[str, torch.Tensor]:
        train = stage == "train"
        # by the batch's place in the epoch: a resumed epoch monitors the same batches
        return self.loss_terms(x, train=train, monitor=not train or batch_idx % self.monitor_every == 0)

    def loss_terms(self, x: torch.Tensor, *, train: bool, monitor: bool = True) -> dict[str, torch.Tensor]:
        """The CD/PCD surrogate Eq. (13) (``loss``; its value is no log-likelihood), the squared
        error ``rec`` of one mean-field up-down pass (summed over inputs, mean over the batch), and
        at validation (binary units) ``pseudo_likelihood``, the mean of the stochastic Eq. (12).

        With ``monitor`` False neither ``loss`` nor ``rec`` is computed (they are no part of the
        update): the terms are ``{OBJECTIVE: s}``, ``s`` carrying the gradient of Eq. (17) with the
        value ``0 * (sum g_b + sum g_c)``, 0 when the gradient is finite and NaN when it is not (a
        NaN input or weight reaches the hidden means, and so g_b), for the non-finite guard."""
        self._check_input(x)
        W, b, c, visible, sigma = self.W.detach(), self.b.detach(), self.c.detach(), self.visible, self.sigma
        hidden = self.hidden
        gibbs = self.generator("train" if train else "val", x.device, self.seed + (1 if train else 2))
        grad = torch.is_grad_enabled() and self.W.requires_grad
        B = x.shape[0]
        with torch.no_grad():
            x_scaled = _scaled(x, visible, sigma)
            a0 = F.linear(x_scaled, W, b)  # (B, n_hidden), kept for F(v) below
            h0_mean = _hidden_mean(a0, hidden)  # Eq. (3)/(7)/(20)
            if train and self.persistent:
                if self.chains.shape[0] < B:  # first batch (or a larger one): chains from the data
                    self.chains = x.detach().clone()
                v = self.chains[:B]
                h = sample_h_given_v(v, W, b, generator=gibbs, visible=visible, sigma=sigma, hidden=hidden)[2]
            else:
                h = _sample_hidden(h0_mean, hidden, gibbs)  # CD: the chain starts at the data, reuse a0
            for step in range(self.k):
                if step > 0:
                    h = sample_h_given_v(v, W, b, generator=gibbs, visible=visible, sigma=sigma, hidden=hidden)[2]
                v = sample_v_given_h(h, W, c, generator=gibbs, visible=visible, sigma=sigma)[2]
            if train and self.persistent:
                self.chains[:B] = v
            if train and self.centred:  # <v>_0, <h>_0 for the offsets, moved after the step
                self._batch_means = (x.mean(0), h0_mean.mean(0))
            u = torch.cat([x, v])  # (2B, n_visible): the data over the chain end v_k, a constant
            u_scaled = _scaled(u, visible, sigma)
            ak = F.linear(u_scaled[B:], W, b)  # (B, n_hidden)
            if grad or not monitor:  # Eq. (17)'s parts: G = [-h_0; h_k] (2B, n_hidden), g_b, g_c
                one = x.new_ones(())  # the factors as 0-dim tensors: rounded as a scaled loss's are
                G = torch.cat([h0_mean, _hidden_mean(ak, hidden)]).mul_(one / B)
                G[:B].neg_()  # G = [-h_0; h_k] / B, Eq. (17)
                g_b = G.sum(0)
                g_c = (u[B:].sum(0) - u[:B].sum(0)).mul_(one / (B * sigma**2))
            if monitor:  # Eq. (13) from Eq. (2)/(6)/(19): mean F(v_0) - mean F(v_k)
                value = (_free_energy_from(x, a0, b, c, visible, sigma, hidden).mean()
                         - _free_energy_from(v, ak, b, c, visible, sigma, hidden).mean())
            else:
                value = (g_b.sum() + g_c.sum()).mul_(0.0)  # 0, or NaN where the gradient is not finite
        if grad:
            value = _ContrastiveDivergence.apply(value, G, u_scaled, g_b, g_c, self.W, self.b, self.c)
        if not monitor:
            return {OBJECTIVE: value}
        terms = {"loss": value}
        with torch.no_grad():
            r = propdown(h0_mean, W, c, visible, sigma)[1]  # (B, n_visible), mean-field up-down
            terms["rec"] = F.mse_loss(r, x, reduction="sum") / B
        if not train and visible == "bernoulli":
            with torch.no_grad():
                terms["pseudo_likelihood"] = pseudo_likelihood(x, W, b, c, gibbs, n_flips=1).mean()
        return terms

    def update(self, batch, batch_idx, last=None):
        """One update: the terms (the non-finite guard and the logging of ``Module``), then the
        gradient of Eq. (17) through ``manual_backward`` (so that DDP and precision plugins see
        it as any loss's) and the optimizer's step (centring in ``on_before_optimizer_step``).
        A Trainer's step takes ``updates_per_step`` of them (``pretrain.module.Block``)."""
        loss = self._step(batch, "train", batch_idx, last)
        optimizer = self.optimizers()
        optimizer.zero_grad()  # set to None: the closed-form gradients are taken, not added
        self.manual_backward(loss)
        optimizer.step()

    def momentum_at(self, epoch: int) -> float:
        """Hinton's schedule: ``momentum`` before ``momentum_switch_epoch``, ``final_momentum`` from it on."""
        h = self.hparams
        return h.final_momentum if epoch >= h.momentum_switch_epoch else h.momentum

    def on_train_epoch_start(self) -> None:
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["momentum"] = self.momentum_at(self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        self._generators.pop("val", None)  # every validation draws the same flipped bits

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.centred:  # once per step, after any gradient accumulation
            self.centre_gradients()

    @torch.no_grad()
    def centre_gradients(self) -> None:
        """Replace the gradients by Eq. (16)'s (the Trainer calls this before each optimizer step
        of a centred RBM), then move the offsets towards the last batch's means."""
        if self._batch_means is None:
            raise RuntimeError(f"{self.layer_name}: centre_gradients needs a training batch's "
                               "loss_terms(train=True) first")
        v_mean, h_mean = self._batch_means
        if self.offset_v.numel() == 0:  # the first batch: mu starts at its mean
            self.offset_v = v_mean.clone()
        if self.W.grad is not None:
            self.W.grad, self.b.grad, self.c.grad = centred_gradients(
                self.W.grad, self.b.grad, self.c.grad, self.offset_v, self.offset_h)
        nu = self.hparams.centring_rate
        self.offset_v.lerp_(v_mean, nu)
        self.offset_h.lerp_(h_mean, nu)
        self._batch_means = None

    def configure_optimizers(self):
        # weight decay on W only: Hinton's guide (2010, sec. 10) does not decay the biases
        h = self.hparams
        return torch.optim.SGD([{"params": [self.W], "weight_decay": h.weight_decay},
                                {"params": [self.b, self.c], "weight_decay": 0.0}],
                               lr=h.lr, momentum=self.momentum_at(0), fused=fused_kernel(self.parameters()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("chains", "offset_v"):  # created lazily, from the first training batch
            saved, mine = state_dict.get(prefix + name), getattr(self, name, None)
            if saved is not None and mine is not None and saved.shape != mine.shape:
                setattr(self, name, torch.empty_like(saved, device=mine.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
