"""A convolution as a linear map on flattened images: the encoder of a convolutional layer.

A row x (B, C*H*W) is read as images (B, C, H, W). With filters W (M, C, k_h, k_w), biases
b (M,) and a pool size p:

    (1) a_full = W * pad(x) + b          (B, M, H_c, W_c), * the cross-correlation of conv2d
            'valid': no padding,          H_c = H - k_h + 1,   W_c = W - k_w + 1
            'same':  k_h - 1 zero rows, (k_h - 1) // 2 above and the rest below (columns
                     likewise),           H_c = H,             W_c = W
    (2) a = maxpool_p(a_full)            (B, M, H', W'),  H' = floor(H_c / p), W' = floor(W_c / p)
    (3) h = s(a) = maxpool_p(s(a_full))   for every unit of ``pretrain.units`` (all non-decreasing)
    (4) A_x v = P_x (W * pad(v))          the linear part of a at x: P_x picks, in each p x p
                                          window, the position where a_full is largest
    (5) A_x^T u = crop(W *^T (P_x^T u))   *^T the transposed convolution, crop the inverse of pad
    (6) N[m, i, j] = sum_{c, u, v inside} W[m, c, u, v]^2 = (W^2 * pad(1))[m, i, j]
            the squared norm of the weights of map m at position (i, j) that reach the image:
            the squared row norm of the unpooled map (4); at the borders of a 'same' convolution
            only part of the filter does, in a 'valid' one all of it (N[m] = ||W_m||^2)
    (7) up_p(h)                           each code copied to its p x p window (nearest-
                                          neighbour upsampling), zeros where (2) floored

So the Jacobian of a layer is ``J(x) = diag(s'(a)) A_x``: ``J v`` is a convolution (4) and
``J^T u`` a transposed convolution (5), never a (n_out, n_in) matrix. ``ConvMap`` holds
(1)-(6) for one set of weights; ``ConvEncoder`` and ``ConvDecoder`` are its trainable modules
for unrolled networks.

References
----------
Masci, Meier, Ciresan & Schmidhuber, Stacked convolutional auto-encoders for hierarchical
feature extraction, ICANN 2011.
Dumoulin & Visin, A guide to convolution arithmetic for deep learning, 2016 (transposed
convolutions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.checks import check_choice, check_int
from pretrain.names import PADDINGS
from pretrain.units import activation, derivative


@dataclass(frozen=True)
class ConvShape:
    """The geometry of Eqs. (1)-(2): input images, filters, padding and pooling."""

    in_shape: tuple[int, int, int]  # (C, H, W)
    maps: int                       # M
    kernel: tuple[int, int]         # (k_h, k_w)
    padding: str                    # one of PADDINGS
    pool: int                       # p; 1: no pooling

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` zero columns and rows of pad(x), in ``F.pad``'s order."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        kh, kw = self.kernel
        return ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)

    @property
    def conv_shape(self) -> tuple[int, int, int]:
        """(M, H_c, W_c) of a_full, Eq. (1)."""
        _, H, W = self.in_shape
        left, right, top, bottom = self.pads
        return (self.maps, H + top + bottom - self.kernel[0] + 1, W + left + right - self.kernel[1] + 1)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """(M, H', W') of the code, Eq. (2)."""
        M, Hc, Wc = self.conv_shape
        return (M, Hc // self.pool, Wc // self.pool)

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)


def conv_shape(in_shape, maps: int, kernel, padding: str, pool: int) -> ConvShape:
    """Validate the geometry of Eqs. (1)-(2) and return it; each bad value is one ValueError."""
    if isinstance(in_shape, (str, bytes)) or not hasattr(in_shape, "__len__") or len(in_shape) != 3:
        raise ValueError(f"in_shape must be (channels, rows, cols) of the input images, e.g. "
                         f"in_shape=(1, 28, 28), got {in_shape!r}")
    in_shape = tuple(check_int(f"in_shape[{i}]", v, 1) for i, v in enumerate(in_shape))
    kernel = (kernel, kernel) if isinstance(kernel, int) and not isinstance(kernel, bool) else kernel
    if not hasattr(kernel, "__len__") or len(kernel) != 2:
        raise ValueError(f"kernel must be an integer or (rows, cols), got {kernel!r}")
    kernel = tuple(check_int("kernel", v, 1) for v in kernel)
    geom = ConvShape(in_shape, check_int("maps", maps, 1), kernel,
                     check_choice("padding", padding, PADDINGS), check_int("pool", pool, 1))
    _, H, W = in_shape
    if padding == "valid" and (kernel[0] > H or kernel[1] > W):
        raise ValueError(f"a {kernel[0]}x{kernel[1]} kernel does not fit {H}x{W} images with "
                         f"padding='valid': use a smaller kernel or padding='same'")
    _, Hc, Wc = geom.conv_shape
    if pool > min(Hc, Wc):
        raise ValueError(f"pool={pool} is larger than the {Hc}x{Wc} maps of the convolution: "
                         f"use pool <= {min(Hc, Wc)}")
    return geom


def conv_glorot(geom: ConvShape, unit: str, generator: torch.Generator) -> torch.Tensor:
    """Filters (M, C, k_h, k_w) ~ U(-a, a), ``a = g sqrt(6 / (fan_in + fan_out))``, g = 4 for a
    sigmoid, 1 otherwise; fan_in = C k_h k_w, fan_out = M k_h k_w / p^2 (the Theano LeNet
    tutorial's counts for a convolution followed by pooling)."""
    C = geom.in_shape[0]
    kh, kw = geom.kernel
    fan_in, fan_out = C * kh * kw, geom.maps * kh * kw / geom.pool ** 2
    bound = (4.0 if unit == "sigmoid" else 1.0) * math.sqrt(6.0 / (fan_in + fan_out))
    return (2.0 * torch.rand(geom.maps, C, kh, kw, generator=generator) - 1.0) * bound


def convolve(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, geom: ConvShape) -> torch.Tensor:
    """Eq. (1): rows (N, C*H*W) -> a_full (N, M, H_c, W_c); no bias when ``b`` is None."""
    x = x.reshape(x.shape[0], *geom.in_shape)
    if geom.padding != "valid":
        x = F.pad(x, geom.pads)  # explicit: 'same' with an even kernel pads unevenly
    return F.conv2d(x, W, b)


def convolve_transpose(z: torch.Tensor, W: torch.Tensor, geom: ConvShape) -> torch.Tensor:
    """The adjoint of Eq. (1)'s linear part: (N, M, H_c, W_c) -> rows (N, C*H*W), Eq. (5)."""
    _, H, Wd = geom.in_shape
    left, _, top, _ = geom.pads
    y = F.conv_transpose2d(z, W)  # (N, C, H_c + k_h - 1, W_c + k_w - 1): the padded image
    return y[:, :, top:top + H, left:left + Wd].reshape(z.shape[0], -1)  # crop, the adjoint of pad


def max_pool(a_full: torch.Tensor, geom: ConvShape) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eq. (2): a_full (N, M, H_c, W_c) -> (a (N, M*H'*W'), where): ``where`` (N, M, H'*W') holds
    each window's argmax as an index into the flat H_c*W_c plane (None when p = 1)."""
    N = a_full.shape[0]
    if geom.pool == 1:
        return a_full.reshape(N, -1), None
    a, where = F.max_pool2d(a_full, geom.pool, return_indices=True)
    return a.reshape(N, -1), where.reshape(N, geom.maps, -1)


def pick(z_full: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
    """P_x of Eq. (4): (N, M, H_c, W_c) -> (N, M*H'*W'), the entries at ``where``."""
    N, M = z_full.shape[:2]
    if where is None:
        return z_full.reshape(N, -1)
    return z_full.reshape(N, M, -1).gather(2, where).reshape(N, -1)


def place(u: torch.Tensor, where: torch.Tensor | None, geom: ConvShape) -> torch.Tensor:
    """P_x^T of Eq. (5): (N, M*H'*W') -> (N, M, H_c, W_c), zeros off ``where``."""
    N = u.shape[0]
    if where is None:
        return u.reshape(N, *geom.conv_shape)
    M, Hc, Wc = geom.conv_shape
    z = u.new_zeros(N, M, Hc * Wc)
    return z.scatter_(2, where, u.reshape(N, M, -1)).reshape(N, M, Hc, Wc)


def upsample(h: torch.Tensor, geom: ConvShape) -> torch.Tensor:
    """Eq. (7): codes (N, M*H'*W') -> (N, M, H_c, W_c), each copied to its p x p window."""
    N = h.shape[0]
    h = h.reshape(N, *geom.out_shape)
    if geom.pool == 1:
        return h
    up = h.repeat_interleave(geom.pool, dim=2).repeat_interleave(geom.pool, dim=3)
    _, Hc, Wc = geom.conv_shape
    return F.pad(up, (0, Wc - up.shape[3], 0, Hc - up.shape[2]))  # the rows and cols (2) dropped


def deconvolve(h: torch.Tensor, W: torch.Tensor, c: torch.Tensor, geom: ConvShape) -> torch.Tensor:
    """A decoder's pre-activation ``z = W *^T up_p(h) + c``, Eqs. (5) and (7): codes
    (N, M*H'*W') -> rows (N, C*H*W); ``c`` (C,) is one bias per input channel."""
    C, H, Wd = geom.in_shape
    r = convolve_transpose(upsample(h, geom), W, geom)  # (N, C*H*W)
    return (r.view(-1, C, H * Wd) + c[:, None]).view(r.shape)


def reach_norms(W: torch.Tensor, geom: ConvShape) -> torch.Tensor:
    """Eq. (6): N (M, H_c, W_c), the squared norm of the weights that reach the image, from one
    convolution of the squared filters with a ones image."""
    ones = torch.ones(1, geom.n_in, dtype=W.dtype, device=W.device)
    return convolve(ones, W * W, None, geom)[0]  # Eq. (6)


class ConvJacobian:
    """``J(x) = diag(s'(a)) A_x`` of one layer at a batch x, as products on rows."""

    def __init__(self, cmap: ConvMap, slope: torch.Tensor, where: torch.Tensor | None):
        self.cmap, self.slope, self.where = cmap, slope, where  # slope (B, n_out)

    def rows(self, T: torch.Tensor) -> torch.Tensor:
        """J T on m rows per example: (B, m, n_in) -> (B, m, n_out)."""
        return self.cmap.rows(T, self.where) * self.slope[:, None, :]

    def rows_t(self, R: torch.Tensor) -> torch.Tensor:
        """J^T R on m rows per example: (B, m, n_out) -> (B, m, n_in)."""
        return self.cmap.rows_t(R * self.slope[:, None, :], self.where)


class ConvMap:
    """Eqs. (1)-(6) for filters ``W`` (M, C, k_h, k_w) and biases ``b`` (M,): a layer's encoder
    as a linear map on flattened images, with the products of its Jacobian.

    ``shape`` is (n_out, n_in), as a weight matrix's would be; ``detach`` and ``to`` return new
    maps, leaving the layer's parameters where they are.
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor, geom: ConvShape):
        self.W, self.b, self.geom = W, b, geom

    def __repr__(self) -> str:
        return f"ConvMap({self.geom})"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.geom.n_out, self.geom.n_in)

    @property
    def dtype(self) -> torch.dtype:
        return self.W.dtype

    @property
    def device(self) -> torch.device:
        return self.W.device

    def detach(self) -> ConvMap:
        return ConvMap(self.W.detach(), self.b.detach(), self.geom)

    def to(self, *args, **kwargs) -> ConvMap:
        return ConvMap(self.W.to(*args, **kwargs), self.b.to(*args, **kwargs), self.geom)

    def preactivation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eqs. (1)-(2): (B, n_in) -> (a (B, n_out), the pooling's argmax or None)."""
        return max_pool(convolve(x, self.W, self.b, self.geom), self.geom)

    def linearize(self, x: torch.Tensor, unit: str) -> tuple[torch.Tensor, ConvJacobian]:
        """Eq. (3) and the layer's Jacobian at x: (h (B, n_out), J(x) as products)."""
        a, where = self.preactivation(x)
        h = activation(unit, a)
        return h, ConvJacobian(self, derivative(unit, a, h), where)

    def rows(self, T: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
        """Eq. (4) on m rows per example: (B, m, n_in) -> (B, m, n_out)."""
        B, m = T.shape[:2]
        z = convolve(T.reshape(B * m, -1), self.W, None, self.geom)  # (B m, M, H_c, W_c)
        return pick(z, _repeat(where, m)).view(B, m, -1)

    def rows_t(self, R: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
        """Eq. (5) on m rows per example: (B, m, n_out) -> (B, m, n_in)."""
        B, m = R.shape[:2]
        z = place(R.reshape(B * m, -1), _repeat(where, m), self.geom)  # (B m, M, H_c, W_c)
        return convolve_transpose(z, self.W, self.geom).view(B, m, -1)


def _repeat(where: torch.Tensor | None, m: int) -> torch.Tensor | None:
    """Each example's argmax (B, M, H'W') for its m rows: (B m, M, H'W')."""
    return None if where is None else where.repeat_interleave(m, dim=0)


def _parameter(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone())


class ConvEncoder(nn.Module):
    """Eqs. (1)-(2) as a trainable module with its own copies of the filters and biases:
    (B, n_in) -> the pooled pre-activation a (B, n_out). ``weight`` (M, C, k_h, k_w), ``bias`` (M,)."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor, geom: ConvShape):
        super().__init__()
        self.weight, self.bias, self.geom = _parameter(W), _parameter(b), geom

    def extra_repr(self) -> str:
        return str(self.geom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool(convolve(x, self.weight, self.bias, self.geom), self.geom)[0]

    @torch.no_grad()
    def reset_parameters(self, unit: str, generator: torch.Generator) -> None:
        """Fresh filters (``conv_glorot``) and zero biases, as an untrained layer has."""
        self.weight.copy_(conv_glorot(self.geom, unit, generator))
        self.bias.zero_()


class ConvDecoder(nn.Module):
    """The decoder's pre-activation ``z = W' *^T up_p(h) + c``: (B, n_out) -> (B, n_in).

    ``W'`` is the encoder's own ``weight`` Parameter when ``shared`` (tied: the transposed
    convolution of the same filters), else a copy ``W_prime`` of the layer's decoder filters;
    ``c`` (C,) is one bias per input channel.
    """

    def __init__(self, encoder: ConvEncoder, W_prime: torch.Tensor | None, c: torch.Tensor,
                 unit: str):
        super().__init__()
        self.geom, self.unit = encoder.geom, unit
        self.shared = W_prime is None
        if self.shared:
            self.W = encoder.weight  # the very same Parameter: fine-tuning keeps it tied
        else:
            self.W_prime = _parameter(W_prime)
        self.c = _parameter(c)

    @property
    def weight(self) -> torch.Tensor:  # (M, C, k_h, k_w)
        return self.W if self.shared else self.W_prime

    def preactivation(self, h: torch.Tensor) -> torch.Tensor:
        return deconvolve(h, self.weight, self.c, self.geom)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Fresh own filters (shared ones follow the encoder), zero c."""
        if not self.shared:
            self.W_prime.copy_(conv_glorot(self.geom, self.unit, generator))
        self.c.zero_()
