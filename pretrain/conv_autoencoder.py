"""A convolutional autoencoder layer: plain, denoising, contractive and sparse, on flattened images.

The layer keeps the contract of ``pretrain.layer`` on rows: ``encode`` maps x (B, C*H*W) to
codes h (B, M*H'*W') and ``decode`` maps them back; the images are shaped inside, from the
constructor's ``in_shape = (C, H, W)``. With the geometry of ``pretrain.conv_maps`` (filters W
(M, C, k_h, k_w), biases b (M,), padding, pool size p):

    (1) x~ ~ q(x~ | x)                                corruption (training only)
    (2) h~ = f(x~) = s_h(maxpool_p(W * pad(x~) + b))   conv_maps Eqs. (1)-(3)
    (3) r = g(h~) = s_v(z),  z = W' *^T up_p(h~) + c    W' = W when tied, c (C,) per channel;
                                                        up_p copies each code to its p x p window
    (4) L_CE(x, r) = sum_i [softplus(z_i) - x_i z_i],   L_MSE(x, r) = 1/2 sum_i (r_i - x_i)^2
    (5) ||J_f(x)||_F^2 = sum_{m, i, j} s_h'(a_{m,i,j})^2 N[m, pi(m, i, j)]
            a = maxpool_p(W * pad(x) + b) the pooled pre-activation, pi(m, i, j) the position
            of the window's maximum (the position itself when p = 1) and N = (W^2 * pad(1)) the
            squared norm of the filter weights that reach the input inside the image there
            (conv_maps Eq. 6): all of the filter for 'valid', only part of it at the borders
            of a 'same' (zero-padded) convolution
    (6) J = mean_B [ L(x, g(f(x~))) + lambda ||J_f(x)||_F^2 + beta_1 ||f(x)||_1 ]
          + beta_KL sum_j KL(rho || mean_B f_j(x))            (penalties Eqs. 4-5)

Eq. (5) holds because row (m, i, j) of J_f(x) = diag(s'(a)) P_x A (conv_maps Eq. 4) is
s'(a_{m,i,j}) times the weights of map m at the position the pooling picked, as seen by the
image: their squared sum is N there. N is one convolution of the squared filters with a ones
image, for every map and position at once; no (B, n_hidden, n_visible) Jacobian is formed.
Max-pooling makes f piecewise smooth: (5) is its Jacobian wherever the window maxima are
unique (almost everywhere), as autograd's. The penalties are taken at the clean x; the
reconstruction target is the clean x; ``loss_terms`` reports each term already weighted.

References
----------
Masci, Meier, Ciresan & Schmidhuber, Stacked convolutional auto-encoders for hierarchical
feature extraction, ICANN 2011.
Rifai et al., Contractive auto-encoders, ICML 2011 (Eq. 5 for a dense sigmoid encoder).
Vincent et al., Stacked denoising autoencoders, JMLR 2010.
"""
from __future__ import annotations

import functools
import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from pretrain import penalties
from pretrain.checks import check_bool, check_choice, check_int, check_positive
from pretrain.conv_maps import (
    ConvDecoder,
    ConvEncoder,
    ConvMap,
    ConvShape,
    conv_glorot,
    conv_shape,
    convolve,
    deconvolve,
    max_pool,
    reach_norms,
)
from pretrain.corruption import check_corruption, corrupt
from pretrain.layer import Layer
from pretrain.names import LOSSES
from pretrain.units import activation, check_unit, derivative


def contraction_at(act_grad: torch.Tensor, where: torch.Tensor | None, W: torch.Tensor,
                   geom: ConvShape) -> torch.Tensor:
    """Eq. (5) from the slopes ``act_grad = s'(a)`` (B, M*H'*W') and the pooling's argmax
    ``where`` (B, M, H'*W'; None without pooling): (B,).

    Parameters
    ----------
    act_grad : (B, n_hidden) slopes at the pooled pre-activation.
    where : (B, M, H'*W') window maxima as indices into each H_c*W_c plane, or None.
    W : (M, C, k_h, k_w) filters.
    geom : the layer's geometry.

    Returns
    -------
    (B,) squared Frobenius norms of the encoder's Jacobian, differentiable in W and the slopes.
    """
    N = reach_norms(W, geom).reshape(geom.maps, -1)  # (M, H_c*W_c), conv_maps Eq. (6)
    if where is None:
        N_at = N.reshape(1, -1)  # (1, n_hidden): every position is its own window
    else:
        N_at = N.expand(act_grad.shape[0], -1, -1).gather(2, where).reshape(act_grad.shape[0], -1)
    return (act_grad * act_grad * N_at).sum(dim=1)  # Eq. (5)


def contraction(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, geom: ConvShape,
                unit: str) -> torch.Tensor:
    """Per-example ``||J_f(x)||_F^2`` of ``f(x) = s(maxpool_p(W * pad(x) + b))``, Eq. (5): (B,)."""
    check_unit(unit, "hidden unit")
    a, where = max_pool(convolve(x, W, b, geom), geom)  # (B, n_hidden)
    return contraction_at(derivative(unit, a, activation(unit, a)), where, W, geom)


class ConvAutoEncoder(Layer):
    """Convolutional autoencoder layer trained on ``J`` of Eq. (6).

    Parameters
    ----------
    n_visible : C*H*W, the length of an input row; must match ``in_shape``.
    n_hidden : M*H'*W', the length of a code; must match the geometry (the message says the
        number when it does not).
    in_shape : (C, H, W) of the input images (required).
    maps : M, the number of filters and feature maps.
    kernel : k, or (k_h, k_w), the filter size.
    padding : ``"valid"`` (no padding) or ``"same"`` (zero padding, maps of the image's size).
    pool : p, max-pooling over non-overlapping p x p windows (1: none); the decoder copies each
        code back to its window (nearest-neighbour upsampling) before the transposed convolution.
    hidden_unit, visible_unit, tied, loss : as ``pretrain.autoencoder.AutoEncoder``; an untied
        decoder has filters ``W_prime`` of its own.
    corruption, corruption_level : the training corruption q (``pretrain.corruption``).
    contraction : lambda, weight of Eq. (5) (with or without pooling).
    sparsity_l1, sparsity_kl, sparsity_target : beta_1, beta_KL and rho (``pretrain.penalties``).
    lr, optimizer, momentum, weight_decay : the optimizer (``pretrain.layer.Layer``).
    seed : the only source of randomness: the initial filters and the corruption noise.
    """

    def __init__(self, n_visible: int, n_hidden: int, *, in_shape: tuple[int, int, int] | None = None,
                 maps: int = 8, kernel: int | tuple[int, int] = 5, padding: str = "valid",
                 pool: int = 1, hidden_unit: str = "sigmoid", visible_unit: str = "sigmoid",
                 tied: bool = True, loss: str = "cross_entropy", corruption: str = "none",
                 corruption_level: float = 0.0, contraction: float = 0.0, sparsity_l1: float = 0.0,
                 sparsity_kl: float = 0.0, sparsity_target: float = 0.05, lr: float = 0.1,
                 optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0,
                 seed: int = 0):
        super().__init__(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
        n_visible, n_hidden = check_int("n_visible", n_visible, 1), check_int("n_hidden", n_hidden, 1)
        if in_shape is None:
            side = math.isqrt(n_visible)
            example = f" (e.g. in_shape=(1, {side}, {side}))" if side * side == n_visible else ""
            raise ValueError(f"a convolutional layer needs in_shape, the (channels, rows, cols) of its "
                             f"{n_visible} inputs{example}")
        geom = conv_shape(in_shape, maps, kernel, padding, pool)
        if geom.n_in != n_visible:
            raise ValueError(f"in_shape={geom.in_shape} holds {geom.n_in} values but the layer has "
                             f"n_visible={n_visible}: give the (channels, rows, cols) of its inputs")
        if geom.n_out != n_hidden:
            M, Hp, Wp = geom.out_shape
            raise ValueError(f"n_hidden={n_hidden} does not match the code of {M} maps of {Hp}x{Wp} "
                             f"(in_shape {geom.in_shape}, kernel {geom.kernel}, padding {padding!r}, "
                             f"pool {pool}): set n_hidden={geom.n_out}")
        check_unit(hidden_unit, "hidden_unit")
        check_unit(visible_unit, "visible_unit")
        check_bool("tied", tied)
        check_choice("loss", loss, LOSSES)
        if loss == "cross_entropy" and visible_unit != "sigmoid":
            raise ValueError(f"loss='cross_entropy' needs visible_unit='sigmoid' (reconstructions are "
                             f"Bernoulli means), got visible_unit={visible_unit!r}; use loss='mse'")
        check_corruption(corruption, corruption_level)
        for name, value in (("contraction", contraction), ("sparsity_l1", sparsity_l1),
                            ("sparsity_kl", sparsity_kl)):
            check_positive(name, value, allow_zero=True)
        if not 0.0 < sparsity_target < 1.0:
            raise ValueError(f"sparsity_target must be in (0, 1), got {sparsity_target!r}")
        if sparsity_kl > 0 and hidden_unit != "sigmoid":
            raise ValueError(f"sparsity_kl reads codes as firing probabilities and needs "
                             f"hidden_unit='sigmoid', got hidden_unit={hidden_unit!r}; "
                             f"use sparsity_l1 instead")
        seed = check_int("seed", seed)
        in_shape = geom.in_shape  # plain ints in the hyperparameters
        self.save_hyperparameters()

        self.geom = geom
        self.hidden_unit = hidden_unit
        self.visible_unit = visible_unit
        self._tied = tied
        g = torch.Generator().manual_seed(seed)  # the init depends on the seed alone
        self.W = nn.Parameter(conv_glorot(geom, hidden_unit, g))  # (M, C, k_h, k_w)
        self.b = nn.Parameter(torch.zeros(geom.maps))  # (M,)
        self.c = nn.Parameter(torch.zeros(geom.in_shape[0]))  # (C,)
        if tied:
            self.register_parameter("W_prime", None)
        else:
            self.W_prime = nn.Parameter(conv_glorot(geom, visible_unit, g))  # (M, C, k_h, k_w)

    # -- the contract: a convolutional layer's weights are filter banks -------------------------
    @property
    def encoder_weight(self) -> torch.Tensor:  # W: (M, C, k_h, k_w)
        return self.W

    @property
    def encoder_bias(self) -> torch.Tensor:  # b: (M,)
        return self.b

    @property
    def decoder_weight(self) -> torch.Tensor:  # W': (M, C, k_h, k_w), W when tied
        return self.W if self._tied else self.W_prime

    @property
    def decoder_bias(self) -> torch.Tensor:  # c: (C,)
        return self.c

    @property
    def tied(self) -> bool:
        return self._tied

    @property
    def n_visible(self) -> int:
        return self.geom.n_in

    @property
    def n_hidden(self) -> int:
        return self.geom.n_out

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """(M, H', W') of a code: the ``in_shape`` of a convolutional layer above."""
        return self.geom.out_shape

    @property
    def encoder_map(self) -> ConvMap:
        """The encoder as a linear map with its Jacobian's products (``finetune.tangents``)."""
        return ConvMap(self.W, self.b, self.geom)

    def unrolled_encoder(self) -> ConvEncoder:
        """A trainable copy of Eq. (2)'s pre-activation (``finetune.unroll``)."""
        return ConvEncoder(self.W, self.b, self.geom)

    def unrolled_decoder(self, encoder: ConvEncoder, untie: bool) -> ConvDecoder:
        """A trainable copy of Eq. (3)'s pre-activation; tied filters stay ``encoder``'s own
        Parameter unless ``untie``."""
        own = None if self._tied and not untie else self.decoder_weight
        return ConvDecoder(encoder, own, self.c, self.visible_unit)

    def encoder_preactivation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. (2)'s ``a`` and the pooling's argmax: (B, n_visible) -> ((B, n_hidden), where)."""
        return max_pool(convolve(x, self.W, self.b, self.geom), self.geom)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (2): (B, n_visible) -> (B, n_hidden)."""
        return activation(self.hidden_unit, self.encoder_preactivation(x)[0])

    def decoder_preactivation(self, h: torch.Tensor) -> torch.Tensor:
        """``z`` of Eq. (3): (B, n_hidden) -> (B, n_visible)."""
        return deconvolve(h, self.decoder_weight, self.c, self.geom)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. (3): (B, n_hidden) -> (B, n_visible)."""
        return activation(self.visible_unit, self.decoder_preactivation(h))

    # -- the objective ------------------------------------------------------------------------
    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example Eq. (4) of reconstructing the clean ``x``: (B, n_visible) -> (B,)."""
        return self._reconstruction_loss(x, self.decoder_preactivation(self.encode(x))).sum(dim=1)

    def _reconstruction_loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Eq. (4) per input, (B, n_visible), from the decoder's pre-activation z."""
        if self.hparams.loss == "cross_entropy":
            # from the logits: log(sigmoid(z)) of a saturated unit would be log(0) = -inf
            return F.binary_cross_entropy_with_logits(z, x, reduction="none")
        return 0.5 * (activation(self.visible_unit, z) - x) ** 2

    def _generator(self, device: torch.device, stream: str) -> torch.Generator:
        # seed * 2 (+1): layers seeded s and s + 1 never share a stream
        return self.generator(stream, device, 2 * self.hparams.seed + (stream == "eval"))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.n_visible:
            raise ValueError(f"{self.layer_name} expects rows of shape (B, {self.n_visible}) "
                             f"(images {self.geom.in_shape} flattened), got {tuple(x.shape)}")
        if self.hparams.loss == "cross_entropy":
            self.check_unit_interval(x, "loss='cross_entropy'",
                                     "rescale the data or use loss='mse' with visible_unit='linear'")

    def loss_terms(self, x: torch.Tensor, *, train: bool) -> dict[str, torch.Tensor]:
        """Eq. (6) for a batch ``x`` (B, n_visible), as weighted terms and their sum ``loss``."""
        self._check_input(x)
        hp, unit = self.hparams, self.hidden_unit
        x_tilde = x
        if train and hp.corruption != "none":
            x_tilde = corrupt(x, hp.corruption, hp.corruption_level, self._generator(x.device, "train"))
        penalised = hp.contraction > 0 or hp.sparsity_l1 > 0 or hp.sparsity_kl > 0
        if x_tilde is x or penalised:
            a, where = self.encoder_preactivation(x)  # (B, n_hidden) at the clean x
            h = activation(unit, a)
        h_tilde = h if x_tilde is x else self.encode(x_tilde)  # Eq. (2)
        z = self.decoder_preactivation(h_tilde)  # (B, n_visible), Eq. (3)
        terms = {"rec": self._reconstruction_loss(x, z).sum() / x.shape[0]}  # Eq. (4), clean x
        if hp.contraction > 0:
            act_grad = derivative(unit, a, h)
            terms["contraction"] = hp.contraction * contraction_at(act_grad, where, self.W, self.geom).mean()
        if hp.sparsity_l1 > 0 or hp.sparsity_kl > 0:
            sparsity = torch.zeros((), dtype=h.dtype, device=h.device)
            if hp.sparsity_l1 > 0:
                sparsity = sparsity + hp.sparsity_l1 * penalties.sparsity_l1(h).mean()
            if hp.sparsity_kl > 0:
                sparsity = sparsity + hp.sparsity_kl * penalties.sparsity_kl(h, hp.sparsity_target)
            terms["sparsity"] = sparsity
        terms["loss"] = functools.reduce(operator.add, terms.values())  # Eq. (6)
        return terms
