"""Unrolling a trained stack into feed-forward networks that train end to end.

For a stack of layers with encoders ``f_k(v) = s_k(W_k v + b_k)`` and decoders
``g_k(h) = t_k(W'_k h + c_k)`` (``W'_k = W_k^T`` for tied layers), k = 1..L:

    (1) h_0 = x,   h_k = s_k(W_k h_{k-1} + b_k)             the encoder: h_L is the code
    (2) r_L = h_L,  r_{k-1} = t_k(W'_k r_k + c_k)            the decoder, top layer first: r = r_0
    (3) logits = V h_L + a,  p(y | x) = softmax(logits)      the MLP: the encoder and a softmax head
    (4) L_CE(x, r)  = sum_i [softplus(z_i) - x_i z_i]        reconstruction, bottom unit sigmoid,
                                                              z the bottom decoder's pre-activation
    (5) L_MSE(x, r) = 1/2 sum_i (r_i - x_i)^2                reconstruction, any other bottom unit

A layer with a per-unit gain g_k after its unit (``encoder_scale``: PSD's predictor) encodes
``h_k = g_k * s_k(W_k h_{k-1} + b_k)`` in Eq. (1); the encoder holds a copy of g_k, fine-tuned
with the weights. Before any fine-tuning, Eq. (1) is ``Stack.encode`` and Eq. (2) after Eq. (1) is
``Stack.reconstruct``: the weights are cloned from the stack, so training the unrolled networks
leaves the stack as it was. A tied layer's decoder reuses the encoder's own ``Parameter``
(transposed), so fine-tuning keeps it tied, unless ``untie=True`` gives it a copy of its own
(Hinton & Salakhutdinov untie the weights for fine-tuning). A layer whose ``W'`` is not
exactly ``W^T`` (a Gaussian RBM with sigma != 1: ``W' = sigma^2 W^T``) always gets a copy.
Eqs. (4)-(5) follow the layer convention: summed over inputs, averaged over the batch by the
caller.

References
----------
Hinton & Salakhutdinov, Reducing the dimensionality of data with neural networks, Science 2006.
Bengio, Lamblin, Popovici & Larochelle, Greedy layer-wise training of deep networks, NIPS 2007.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.autoencoder import glorot_uniform
from pretrain.checks import check_bool, check_int
from pretrain.stack import Stack
from pretrain.units import activation


def _layers(stack: Stack) -> list:
    """The stack's layers, checked: at least one, and adjacent sizes that chain."""
    layers = list(stack)
    if not layers:
        raise ValueError("cannot unroll a stack with no layers: pretrain at least one layer first")
    for k in range(len(layers) - 1):
        if layers[k].n_hidden != layers[k + 1].n_visible:
            raise ValueError(f"cannot unroll: layer {k + 1} has n_hidden={layers[k].n_hidden} but "
                             f"layer {k + 2} has n_visible={layers[k + 1].n_visible}")
    return layers


def _linear(W: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` holding clones of ``W`` (n_out, n_in) and ``b`` (n_out,)."""
    # built on the meta device so that its default init draws nothing from the global RNG
    lin = nn.Linear(W.shape[1], W.shape[0], device="meta")
    lin.weight = nn.Parameter(W.detach().clone())
    lin.bias = nn.Parameter(b.detach().clone())
    return lin


def _encoder_module(layer) -> nn.Module:
    """A trainable copy of a layer's pre-activation ``a_k = W_k h_{k-1} + b_k``: the layer's own
    module where it has one (``unrolled_encoder``: a convolution, maybe max-pooled, of
    ``pretrain.conv_maps``), else an ``nn.Linear``."""
    own = getattr(layer, "unrolled_encoder", None)
    return own() if own is not None else _linear(layer.encoder_weight, layer.encoder_bias)


def _decoder_module(layer, encoder_module: nn.Module, untie: bool) -> nn.Module:
    """A trainable copy of a layer's decoder: its own module where it has one
    (``unrolled_decoder``: a transposed convolution), else a ``_DecoderLayer``."""
    own = getattr(layer, "unrolled_decoder", None)
    return own(encoder_module, untie) if own is not None else _DecoderLayer(layer, encoder_module, untie)


class UnrolledEncoder(nn.Module):
    """Eq. (1): the stack's encoders as ``nn.Linear`` layers with copied weights.

    Parameters
    ----------
    stack : a trained ``pretrain.Stack`` (or any sequence of layers keeping the contract).

    Attributes
    ----------
    layers : ``nn.ModuleList`` of ``nn.Linear``, bottom-up; ``layers[k].weight`` is W_k. A
        convolutional layer's is its own module (``pretrain.conv_maps.ConvEncoder``, filters
        as ``weight``), which returns the pooled pre-activation: max-pooling commutes with
        every unit (all are non-decreasing), so Eq. (1) is unchanged.
    sizes : ``[n_visible, n_hidden_1, ..., n_hidden_L]``.
    units : hidden unit names ``[s_1, ..., s_L]`` (``pretrain.units``).
    scales : ``nn.ParameterDict`` of the gains g_k after the unit, keyed ``str(k)``, for the
        layers that have one (``encoder_scale`` not None); empty for most stacks.
    """

    def __init__(self, stack: Stack):
        super().__init__()
        layers = _layers(stack)
        self.layers = nn.ModuleList(_encoder_module(layer) for layer in layers)
        self.units = [layer.hidden_unit for layer in layers]
        self.sizes = [layers[0].n_visible] + [layer.n_hidden for layer in layers]
        self.scales = nn.ParameterDict({
            str(k): nn.Parameter(layer.encoder_scale.detach().clone())  # g_k: (n_hidden_k,)
            for k, layer in enumerate(layers) if getattr(layer, "encoder_scale", None) is not None})

    @property
    def n_visible(self) -> int:
        return self.sizes[0]

    @property
    def n_hidden(self) -> int:
        return self.sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1): (B, n_visible) -> (B, n_hidden)."""
        h = x
        for k, (lin, unit) in enumerate(zip(self.layers, self.units)):
            h = activation(unit, lin(h))  # (B, n_hidden_k)
            if str(k) in self.scales:
                h = h * self.scales[str(k)]  # g_k * s_k(a_k)
        return h

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Forget the pretrained weights: Glorot-uniform W_k (as a fresh layer), zero b_k, unit g_k."""
        for lin, unit in zip(self.layers, self.units):
            if not isinstance(lin, nn.Linear):  # a layer's own module: fresh filters of its shape
                lin.reset_parameters(unit, generator)
                continue
            n_out, n_in = lin.weight.shape
            lin.weight.copy_(glorot_uniform(n_out, n_in, unit, generator))
            lin.bias.zero_()
        for g in self.scales.values():
            g.fill_(1.0)


class _DecoderLayer(nn.Module):
    """One decoder ``t(W' h + c)``; ``W'`` is the encoder's ``W`` transposed when shared."""

    def __init__(self, layer, encoder_linear: nn.Linear, untie: bool):
        super().__init__()
        self.unit = layer.visible_unit
        # share only where W' is exactly W^T: a Gaussian RBM with sigma != 1 uses sigma W^T
        # against W / sigma, which one shared Parameter cannot express; it gets a copy
        self.shared = (layer.tied and not untie
                       and torch.equal(layer.decoder_weight, layer.encoder_weight.T))
        if self.shared:
            # the very same Parameter as the encoder's: one tensor, two uses, stays tied
            self.W = encoder_linear.weight  # (n_hidden, n_visible)
        else:
            self.W_prime = nn.Parameter(layer.decoder_weight.detach().clone())  # (n_visible, n_hidden)
        self.c = nn.Parameter(layer.decoder_bias.detach().clone())  # (n_visible,)

    @property
    def weight(self) -> torch.Tensor:  # W': (n_visible, n_hidden)
        return self.W.T if self.shared else self.W_prime

    def preactivation(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight, self.c)  # (B, n_visible)


class UnrolledDecoder(nn.Module):
    """Eq. (2): the stack's decoders mirrored, the top layer's first.

    Parameters
    ----------
    stack : the stack ``encoder`` was unrolled from.
    encoder : the ``UnrolledEncoder`` of ``stack``; tied layers share its weights.
    untie : give every tied layer its own copy ``W' = W^T`` instead of sharing.

    Attributes
    ----------
    layers : ``nn.ModuleList``, top-down: ``layers[0]`` decodes the top code.
    sizes : ``[n_hidden_L, ..., n_visible]``.
    output_unit : the bottom layer's visible unit: sigmoid selects Eq. (4), anything else Eq. (5).
    """

    def __init__(self, stack: Stack, encoder: UnrolledEncoder, *, untie: bool = False):
        super().__init__()
        layers = _layers(stack)
        check_bool("untie", untie)
        sizes = [layers[0].n_visible] + [layer.n_hidden for layer in layers]
        if encoder.sizes != sizes:
            raise ValueError(f"the encoder has sizes {encoder.sizes} but the stack has sizes {sizes}: "
                             f"unroll both from the same stack")
        self.layers = nn.ModuleList(_decoder_module(layer, lin, untie)
                                    for layer, lin in reversed(list(zip(layers, encoder.layers))))
        self.sizes = sizes[::-1]
        self.output_unit = layers[0].visible_unit

    def check_encoder(self, encoder: UnrolledEncoder) -> None:
        """Raise a ValueError unless every shared weight is ``encoder``'s own Parameter."""
        if encoder.sizes != self.sizes[::-1]:
            raise ValueError(f"the decoder mirrors sizes {self.sizes[::-1]} but the encoder has sizes "
                             f"{encoder.sizes}: unroll both with unroll_autoencoder(stack)")
        for dec, lin in zip(self.layers, reversed(encoder.layers)):
            if dec.shared and dec.W is not lin.weight:
                raise ValueError("the decoder's tied weights are not this encoder's: unroll the "
                                 "encoder and decoder together with unroll_autoencoder(stack)")

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. (2) up to the bottom decoder's pre-activation z: (B, n_hidden) -> (B, n_visible)."""
        for dec in self.layers[:-1]:
            h = activation(dec.unit, dec.preactivation(h))  # (B, size of the layer below)
        return self.layers[-1].preactivation(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. (2): (B, n_hidden) -> (B, n_visible)."""
        return activation(self.output_unit, self.logits(h))

    def reconstruction_error(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Eq. (4) or (5) between ``x`` (B, n_visible) and the decoding of ``h``: (B,)."""
        return self.error_from_logits(self.logits(h), x)

    def error_from_logits(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Eq. (4) or (5) from the bottom pre-activation ``z`` (B, n_visible): (B,)."""
        if self.output_unit == "sigmoid":
            lo, hi = torch.aminmax(x.detach())
            if lo < 0 or hi > 1:
                raise ValueError(f"the cross-entropy reconstruction (sigmoid visible units) needs "
                                 f"inputs in [0, 1], got values in [{lo.item():.4g}, {hi.item():.4g}]; "
                                 f"rescale the data")
            # from the logits: log(sigmoid(z)) of a saturated unit would be log(0) = -inf
            return F.binary_cross_entropy_with_logits(z, x, reduction="none").sum(dim=1)  # Eq. (4)
        r = activation(self.output_unit, z)
        return 0.5 * ((r - x) ** 2).sum(dim=1)  # Eq. (5)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Forget the pretrained weights: Glorot-uniform own W' (shared W follow the encoder), zero c."""
        for dec in self.layers:
            if not isinstance(dec, _DecoderLayer):  # a layer's own module (a convolution)
                dec.reset_parameters(generator)
                continue
            if not dec.shared:
                n_out, n_in = dec.W_prime.shape
                dec.W_prime.copy_(glorot_uniform(n_out, n_in, dec.unit, generator))
            dec.c.zero_()


def unroll_autoencoder(stack: Stack, *, untie: bool = False) -> tuple[UnrolledEncoder, UnrolledDecoder]:
    """Eqs. (1)-(2): the deep autoencoder of a stack, as ``(encoder, decoder)``.

    ``decoder(encoder(x))`` equals ``stack.reconstruct(x)`` until either is trained.

    References
    ----------
    Hinton & Salakhutdinov, Science 2006.
    """
    encoder = UnrolledEncoder(stack)
    return encoder, UnrolledDecoder(stack, encoder, untie=untie)


class MLP(nn.Module):
    """Eq. (3): an encoder and a softmax head; ``forward`` returns the logits (B, n_classes).

    Parameters
    ----------
    encoder : an ``UnrolledEncoder`` (used as is, not copied).
    n_classes : number of classes (>= 2).
    seed : seeds the head's small random weights ``V ~ N(0, 0.01^2)``; ``a = 0``.
    """

    def __init__(self, encoder: UnrolledEncoder, n_classes: int, *, seed: int = 0):
        super().__init__()
        check_int("n_classes", n_classes, 2)
        seed = check_int("seed", seed)
        self.encoder = encoder
        W = encoder.layers[-1].weight
        g = torch.Generator().manual_seed(seed)
        V = 0.01 * torch.randn(n_classes, encoder.n_hidden, generator=g)  # (n_classes, n_hidden)
        self.head = _linear(V.to(W), torch.zeros(n_classes).to(W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (3): (B, n_visible) -> logits (B, n_classes)."""
        return self.head(self.encoder(x))


def unroll_mlp(stack: Stack, n_classes: int, *, seed: int = 0) -> MLP:
    """Eq. (3): the stack's encoders (copied) topped by a softmax head; returns logits.

    References
    ----------
    Bengio, Lamblin, Popovici & Larochelle, NIPS 2007.
    """
    return MLP(UnrolledEncoder(stack), n_classes, seed=seed)
