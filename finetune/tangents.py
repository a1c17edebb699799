"""Tangents of the data manifold: the leading right singular vectors of a stack's Jacobian.

For a stack of layers ``h_l = s_l(W_l h_{l-1} + b_l)`` (``pretrain.stack``) with h_0 = x in R^d:

    (1) a_l = W_l h_{l-1} + b_l,   h_l = s_l(a_l),   D_l = diag(s_l'(a_l))        l = 1..L
    (2) J(x) = dh_L/dx = D_L W_L D_{L-1} W_{L-1} ... D_1 W_1                    (n_L, d)
    (3) J V:    t_0 = V,  t_l = s_l'(a_l) * (W_l t_{l-1}),    J V = t_L          forward chain
    (4) J^T U:  g_L = U,  g_{l-1} = W_l^T (s_l'(a_l) * g_l),  J^T U = g_0        backward chain
    (5) J(x) = sum_i sigma_i p_i v_i^T,  sigma_1 >= sigma_2 >= ...               the SVD
        B_x = {v_1, ..., v_k}: the k leading right singular vectors, the directions in which
        the code changes most; the MTC takes them as the tangent plane of the manifold at x.

A layer with a per-unit gain after its unit, ``h_l = g_l * s_l(a_l)`` (``encoder_scale``: PSD's
predictor), enters (1)-(4) exactly through ``encoder_params``: g_l is folded into the next
layer's weight, ``W_{l+1} diag(g_l)``, and on the top layer it is one more, linear layer
``(diag(g_L), 0)``.

A convolutional layer (``encoder_map``: ``pretrain.conv_maps.ConvMap``) has
``a_l = A_l(x) h_{l-1} + b_l`` with A_l(x) its convolution followed by the max-pooling's choice
of one position per window (fixed by x), so ``D_l A_l(x)`` takes the place of ``D_l W_l`` in
(2)-(4): its products in (3) and (4) are a convolution and a transposed convolution (Eqs. 4-5
there) instead of the two matmuls, and Eq. (9) below then searches the whole input space.

Neither (3) nor (4) forms J: each is one matmul per layer on a whole batch of vectors, so the
tangents are computed matrix-free, for a whole batch at once, by a randomized block Krylov
method on J^T J (Musco and Musco 2015; Halko, Martinsson and Tropp 2011 for the randomized
start), with m = k + oversample Krylov vectors built in blocks of b (b = 1, the default, is
Lanczos with full reorthogonalisation):

    (6) Q_0 = orth(J^T Omega),  Omega ~ N(0, I) of shape (n_L, b)               start in the row space
    (7) Q_j = orth((I - K_j K_j^T) J^T J Q_{j-1}),  K_j = [Q_0 .. Q_{j-1}]      j = 1 .. ceil(m/b) - 1
    (8) K = [Q_0 .. Q_{s-1}] (d, m) orthonormal,  P = J K (n_L, m),
        P^T P = Y Theta Y^T  (Rayleigh-Ritz),  v_i = K y_i,  sigma_i = ||P y_i|| = sqrt(theta_i)

Eq. (7) keeps every block (not only the last, as subspace iteration does): for the same
number of products with J the Krylov space holds polynomials of higher degree in J^T J, so it
reaches a given accuracy with fewer products; for the same reason b = 1 (degree m) converges
fastest per product, and larger blocks only help to resolve clusters of equal singular
values. ``orth`` is block classical Gram-Schmidt done twice
("twice is enough"), the first pass against the last two blocks only (in exact arithmetic
J^T J Q_{j-1} is orthogonal to the older ones), the second against all of K, each followed by
a symmetric orthonormalisation of the block (for b > 1 through the eigendecomposition of its
(b, b) Gram matrix in float64); a direction that projection reduces to rounding error (the
Krylov space has exhausted the row space of J, whose rank is at most n_L) is replaced by a
random one, so K stays orthonormal and the result is defined even for k >= rank J (then
sigma_i = 0 and v_i completes an orthonormal basis). The heavy products (3), (4) run in the
stack's dtype; the small eigenproblems in float64.

Where to search. J = (D_L W_L ... D_1) W_1, so J's row space lies in W_1's, and pretraining
leaves W_1 numerically low-rank (a part of its d directions holds nearly all of
||W_1||_F^2, where a Glorot-initialised W_1 needs most of them). With W_1's SVD
W_1 = sum_i s_i a_i w_i^T, s_1 >= s_2 >= ...:

    (9) r = min{r : sum_{i>r} s_i^2 <= rank_tol sum_i s_i^2},  V_r = [w_1 .. w_r] (d, r),
        J V_r = D_L W_L ... D_1 (W_1 V_r),   v = V_r y

Eqs. (6)-(8) run on J V_r (n_L, r) in the coordinates y in R^r and the Ritz vectors are mapped
back: the products are exact on span V_r, the first layer costs n_1 r multiply-adds instead of
n_1 d, the orthogonalisation works on rows of r, and what is left out is J (I - V_r V_r^T) =
D_L W_L ... D_1 sum_{i>r} s_i a_i w_i^T, of Frobenius norm at most
||D_L W_L ... D_1||_2 sqrt(rank_tol) ||W_1||_F. r is at least m and rounded up to a multiple
of 16; the search is restricted only where that pays, ``2 m n_1 (d - r) > k r d`` (products
saved against the k tangents mapped back), so an untrained stack keeps the whole space, and
``rank_tol = 0`` keeps W_1's whole row space (exact; a saving only when n_1 < d).

Cost, and the choice of path. Eqs. (6)-(8) cost ``b + m + (m - last block)`` (2m for b = 1)
products with J or J^T per example, each ``2 sum_l n_l n_{l-1}`` flops, plus O(m^2 d) for the
orthogonalisation. J itself, built by (4) on the n_L unit vectors (or (3) on the d unit
vectors), costs min(n_L, d) products, and its batched SVD is exact: ``method="auto"`` takes
that path when it needs no more products than the Krylov method, ``"explicit"`` and
``"krylov"`` force one. Either way memory per batch is bounded and J is never formed for the
whole set. Forming J^T J per example instead (the Gram form) costs 2 d n_L (n_1 + d) flops for
two layers, d / (2m) times the Krylov products when n_1 = n_L, before a (d, d) eigh. On CPU
the batches are shared out to ``torch.get_num_threads()`` worker threads of one intra-op
thread each (see ``_map``); on a GPU they run one after the other.

Accuracy. The top-k subspace is only defined up to the gap sigma_k - sigma_{k+1}: with a gap
the Ritz vectors converge to the exact tangents as m grows, the faster the wider the gap;
without one, the measure that stays meaningful is the energy captured,
``sum_i ||J u_i||^2 / sum_{i<=k} sigma_i^2`` (1 for the exact subspace), which the block
Krylov method brings close to 1 independently of the gap (Musco and Musco 2015). The
restriction of Eq. (9) adds at most the error bounded there.

References
----------
Rifai, Dauphin, Vincent, Bengio and Muller, The manifold tangent classifier, NIPS 2011.
Halko, Martinsson and Tropp, Finding structure with randomness, SIAM Review 53(2), 2011.
Musco and Musco, Randomized block Krylov methods for stronger and faster approximate
singular value decomposition, NIPS 2015.
Giraud, Langou, Rozloznik and van den Eshof, Rounding error analysis of the classical
Gram-Schmidt orthogonalization process, Numer. Math. 101, 2005 ("twice is enough").
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from finetune.tangent_defaults import OVERSAMPLE, RANK_TOL
from pretrain.checks import check_choice, check_float, check_int
from pretrain.stack import Stack
from pretrain.units import activation, derivative

METHODS = ("auto", "krylov", "explicit")

# Part of the cache key: bump it when the same options give other tangents.
ALGORITHM = "tangents 2"

# A direction whose squared norm after projection is below this many float eps of the block's
# squared norm is rounding error, not Krylov information: it is replaced by a random one.
_BREAKDOWN_EPS = 100.0


# -- the Jacobian, matrix-free ----------------------------------------------------------------
def encoder_params(stack: Stack) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """``(W_l, b_l, unit_l)`` of every layer, bottom-up, a layer's gain g_l (``encoder_scale``)
    folded in as the module docstring says: the products of (1)-(4) then give ``stack.encode``'s
    code and Jacobian."""
    params, gain = [], None
    for layer in stack:
        W = layer.encoder_weight  # (n_l, n_{l-1})
        if gain is not None:
            if W.ndim != 2:  # a filter bank: the gain has no column of W to scale
                raise ValueError(f"layer {len(params) + 1} is convolutional above a layer with a "
                                 f"per-unit gain (psd): put the convolutional layers first")
            W = W * gain  # W_l diag(g_{l-1})
        params.append((W, layer.encoder_bias, layer.hidden_unit))
        gain = getattr(layer, "encoder_scale", None)
    if gain is not None:  # the top layer's gain: h_L = diag(g_L) s_L(a_L) + 0
        params.append((torch.diag(gain), torch.zeros_like(gain), "linear"))
    return params


def linear_maps(stack: Stack) -> list:
    """``encoder_params``, with a layer's own linear map (``encoder_map``, a convolution) in
    place of its weight where it has one: what the products (3)-(4) are computed from."""
    params = encoder_params(stack)
    for l, layer in enumerate(stack):
        cmap = getattr(layer, "encoder_map", None)
        if cmap is not None:
            params[l] = (cmap, *params[l][1:])
    return params


def _forward(params, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eq. (1): the code h_L (B, n_L) and the slopes s_l'(a_l) (B, n_l) of every layer; for a
    layer's own linear map, its Jacobian at x (``pretrain.conv_maps.ConvJacobian``)."""
    slopes = []
    h = x
    for W, b, unit in params:
        if not isinstance(W, torch.Tensor):  # a convolution: D_l A_l(x) as products
            h, jacobian = W.linearize(h, unit)
            slopes.append(jacobian)
            continue
        a = torch.addmm(b, h, W.T)  # (B, n_l), Eq. (1)
        h = activation(unit, a)
        slopes.append(derivative(unit, a, h))
    return h, slopes


def _scale(T: torch.Tensor, s: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``T * s[:, None, :]``, in place (or into ``out``) when autograd does not need T."""
    if torch.is_grad_enabled() and (T.requires_grad or s.requires_grad):
        return T * s[:, None, :]
    if out is not None:
        return torch.mul(T, s[:, None, :], out=out)
    return T.mul_(s[:, None, :])


def _mm(A: torch.Tensor, W: torch.Tensor, work: dict | None, key) -> torch.Tensor:
    """``A @ W``, written into the scratch matrix ``work[key]`` when a workspace is given.

    The Krylov loop makes the same products dozens of times per batch; reusing their outputs
    matters on CPU, where each fresh multi-megabyte tensor comes as new pages from the
    operating system, whose faults cost about as much as the elementwise op that follows.
    """
    if work is None:
        return A @ W
    out = work.get(key)
    if out is None or out.shape != (A.shape[0], W.shape[1]):
        out = work[key] = A.new_empty(A.shape[0], W.shape[1])
    return torch.mm(A, W, out=out)


def _jvp_rows(params, slopes, T: torch.Tensor, out: torch.Tensor | None = None,
              work: dict | None = None) -> torch.Tensor:
    """Eq. (3) on m vectors per example stored as rows: T (B, m, d) -> (J T^T)^T (B, m, n_L).

    Rows rather than columns, so that each layer is one (B m, n_{l-1}) x (n_{l-1}, n_l) matmul;
    the slope is applied in place on the matmul's output, the last one written to ``out`` when
    given (no copy). With a workspace ``work`` the intermediate rows live in its scratch matrices.
    """
    B, m = T.shape[:2]
    last = len(params) - 1
    for layer, ((W, _, _), s) in enumerate(zip(params, slopes)):
        if not isinstance(s, torch.Tensor):  # a convolution's J_l T, Eq. (3)
            T = s.rows(T)
            T = out.copy_(T) if layer == last and out is not None else T
            continue
        T = _mm(T.reshape(B * m, -1), W.T, work, ("jvp", layer)).view(B, m, -1)
        T = _scale(T, s, out if layer == last else None)  # Eq. (3)
    return T


def _vjp_rows(params, slopes, R: torch.Tensor, work: dict | None = None) -> torch.Tensor:
    """Eq. (4) on rows: R (B, m, n_L) -> (J^T R^T)^T (B, m, d). R is not modified.

    With a workspace ``work`` the result is one of its scratch matrices, overwritten by the
    next call with the same workspace.
    """
    B, m = R.shape[:2]
    for layer, ((W, _, _), s) in enumerate(zip(reversed(params), reversed(slopes))):
        if not isinstance(s, torch.Tensor):  # a convolution's J_l^T R, Eq. (4): a new tensor
            R = s.rows_t(R)
            continue
        if layer == 0 and work is not None:
            R = torch.mul(R, s[:, None, :], out=_scratch(work, "vjp-top", R.shape, R))
        else:
            R = R * s[:, None, :] if layer == 0 else _scale(R, s)
        R = _mm(R.reshape(B * m, -1), W, work, ("vjp", layer)).view(B, m, -1)  # Eq. (4)
    return R


def _scratch(work: dict, key, shape, like: torch.Tensor) -> torch.Tensor:
    """``work[key]``, a tensor of ``shape`` like ``like`` (allocated when missing or mis-shaped)."""
    out = work.get(key)
    if out is None or out.shape != tuple(shape):
        out = work[key] = like.new_empty(shape)
    return out


def _check_input(stack: Stack, x: torch.Tensor, what: str = "x") -> None:
    if x.ndim != 2 or x.shape[1] != stack.n_visible:
        raise ValueError(f"{what} must have shape (B, {stack.n_visible}) to match the stack's "
                         f"n_visible, got {tuple(x.shape)}")


def jvp(stack: Stack, x: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The code and Jacobian-vector products of Eq. (3), without forming J.

    Parameters
    ----------
    stack : layers with ``encoder_weight``, ``encoder_bias`` and ``hidden_unit``.
    x : (B, d) inputs.
    V : (B, d, m) m vectors per example.

    Returns
    -------
    h : (B, n_L) the code ``stack.encode(x)``.
    JV : (B, n_L, m) ``J(x) V``.
    """
    _check_input(stack, x)
    if V.ndim != 3 or V.shape[:2] != x.shape:
        raise ValueError(f"V must have shape ({x.shape[0]}, {x.shape[1]}, m), got {tuple(V.shape)}")
    params = linear_maps(stack)
    h, slopes = _forward(params, x)
    return h, _jvp_rows(params, slopes, V.transpose(1, 2).contiguous()).transpose(1, 2)


def vjp(stack: Stack, x: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Transposed Jacobian products of Eq. (4): U (B, n_L, m) -> J(x)^T U (B, d, m)."""
    _check_input(stack, x)
    if U.ndim != 3 or U.shape[0] != x.shape[0] or U.shape[1] != stack.n_hidden:
        raise ValueError(f"U must have shape ({x.shape[0]}, {stack.n_hidden}, m), got {tuple(U.shape)}")
    params = linear_maps(stack)
    _, slopes = _forward(params, x)
    return _vjp_rows(params, slopes, U.transpose(1, 2).contiguous()).transpose(1, 2)


# -- small dense linear algebra, batched ------------------------------------------------------
@contextlib.contextmanager
def one_thread():
    """One intra-op thread inside the block, the caller's count restored after (also on error).

    For batched LAPACK calls on small matrices: torch loops over the batch and MKL threads each
    small call, and for eigh/svd above 25 rows (divide and conquer) the threads then wait on
    each other far longer than the small calls take, worst on a busy machine. And for
    ``_map``'s worker threads, which read the count when they start.
    """
    n = torch.get_num_threads()
    if n == 1:  # already (the worker threads of ``_map``): do not touch the process-wide setting
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _orthonormalize(Z: torch.Tensor, K: torch.Tensor | None, generator: torch.Generator,
                    recent: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (7)'s orth: rows of Z (B, b, d) made orthonormal and orthogonal to the rows of K (B, j, d).

    Two passes of block classical Gram-Schmidt, each followed by the symmetric
    orthonormalisation ``(Z Z^T)^{-1/2} Z`` (for b > 1 through the (b, b) eigenproblem in
    float64; for b = 1 a division by the norm, after the second pass only, since a projection
    does not need unit rows). The first pass projects against the last ``recent`` rows
    of K only (all of them when None), the second against all of K. In the Krylov recurrence,
    Z = J^T J Q_i is orthogonal in exact arithmetic to every block but the last two, so its
    components along the older ones are rounding errors that one pass removes (Lanczos with
    full reorthogonalisation): K, the largest array of the loop, is read twice per block
    instead of four times. The Gram matrix is formed in Z's dtype: in float32 the first pass
    leaves an orthogonality error of about eps cond(Z)^2, which the second pass, starting from
    nearly orthonormal rows, removes (as in CholeskyQR2). Directions lost to rounding are
    replaced by random ones (see the module docstring), which a further full pass then
    orthogonalises. Z is overwritten; the result is written to ``out`` when given (the basis's
    next rows: no copy) and returned.
    """
    eps = torch.finfo(Z.dtype).eps * _BREAKDOWN_EPS
    ref = torch.linalg.vector_norm(Z, dim=-1).amax(-1).double() ** 2  # (B,) largest squared row norm
    j = 0 if K is None else K.shape[1]
    passes = [j if recent is None else min(recent, j), j]  # rows of K to project against
    npass = 0
    while npass < len(passes):
        if passes[npass]:
            basis = K[:, j - passes[npass]:j]
            Z = Z.baddbmm_(Z @ basis.transpose(1, 2), basis, alpha=-1)  # Z - (Z K^T) K, (B, b, d)
        last = npass + 1 == len(passes)
        dest = out if out is not None and last else Z
        if Z.shape[1] == 1:  # Lanczos: the (1, 1) Gram matrix is the squared norm
            lam = torch.linalg.vector_norm(Z, dim=-1).double() ** 2  # (B, 1)
            lost = lam <= eps * ref[:, None]
            if last or lost.any():  # projections do not need a unit row: scale once, at the end
                scale = torch.where(lost, torch.zeros_like(lam), lam.clamp_min(1e-300).rsqrt())
                Z = torch.mul(Z, scale.to(Z.dtype)[:, :, None], out=dest)
                lam = torch.ones_like(lam)
        else:
            lam, V = torch.linalg.eigh((Z @ Z.transpose(1, 2)).double())  # (B, b), (B, b, b)
            lost = lam <= eps * ref[:, None]  # (B, b)
            scale = torch.where(lost, torch.zeros_like(lam), lam.clamp_min(1e-300).rsqrt())
            Z = dest.copy_((V.transpose(1, 2) * scale[:, :, None]).to(Z.dtype) @ Z)  # orthonormal rows or 0
        if lost.any():
            noise = torch.randn(Z.shape, generator=generator, dtype=Z.dtype,
                                device=Z.device) / math.sqrt(Z.shape[-1])
            Z = Z.copy_(torch.where(lost[:, :, None], noise, Z))
            if npass + 1 == len(passes) and len(passes) < 4:
                passes.append(j)  # orthogonalise the random directions
        ref = lam.amax(-1) if Z.shape[1] == 1 else torch.ones_like(ref)  # the next pass's start
        npass += 1
    return Z


def _fix_signs(U: torch.Tensor) -> torch.Tensor:
    """Flip each row of U (B, k, d), in place, so that its largest-magnitude entry is positive.

    From the row's largest and smallest entries (amax and amin are vectorised, cheaper than
    ``abs().argmax()``); a row whose extremes are +a and -a keeps its sign.
    """
    hi, lo = U.amax(-1, keepdim=True), U.amin(-1, keepdim=True)  # (B, k, 1)
    return U.mul_(torch.where(hi >= -lo, 1.0, -1.0).to(U.dtype))


def _krylov_batch(params, x, k, m, b, generator, work: dict, out: torch.Tensor | None = None,
                  subspace: tuple[list, torch.Tensor] | None = None):
    """Eqs. (6)-(8) on one batch: (B, d) -> U (B, k, d), S (B, k).

    ``work`` holds the scratch tensors (the basis, the products), reused from one block and
    one batch to the next. U is written to ``out`` when given, else to a scratch tensor that
    the next call with the same workspace overwrites. With ``subspace = (reduced, V_r)`` from
    ``_input_subspace``, the slopes come from ``params`` (the true stack) and the products
    from ``reduced``, whose first weight is W_1 V_r: Eqs. (6)-(8) run on J V_r in the
    coordinates y of Eq. (9), and the Ritz vectors are mapped back, v = V_r y.
    """
    h, slopes = _forward(params, x)
    if subspace is not None:
        params, basis = subspace
    B = x.shape[0]
    d = params[0][0].shape[1]  # the coordinates of the Krylov space: r of Eq. (9), else the input's
    n_L = h.shape[1]
    sizes = [b] * (m // b) + ([m % b] if m % b else [])
    K = _scratch(work, "K", (B, m, d), x)  # the Krylov basis, rows orthonormal
    P = _scratch(work, "P", (B, m, n_L), x)  # J K^T as rows
    omega = torch.randn(B, sizes[0], n_L, generator=generator, dtype=x.dtype, device=x.device)
    with one_thread():
        _orthonormalize(_vjp_rows(params, slopes, omega, work), None, generator,
                        out=K[:, :sizes[0]])  # Eq. (6)
    j = prev = 0
    for i, size in enumerate(sizes):
        # for b = 1 the block K[:, j] is a (B, d) matrix with row stride m d: a view, no copy
        _jvp_rows(params, slopes, K[:, j:j + size], out=P[:, j:j + size], work=work)
        j += size
        if i + 1 < len(sizes):
            Z = _vjp_rows(params, slopes, P[:, j - size:j], work)  # J^T J Q_{i}
            nxt = sizes[i + 1]
            with one_thread():  # the last block is smaller: keep its leading directions
                _orthonormalize(Z[:, :nxt], K[:, :j], generator, recent=size + prev,
                                out=K[:, j:j + nxt])  # Eq. (7)
            prev = size
    with one_thread():
        theta, Y = torch.linalg.eigh((P @ P.transpose(1, 2)).double())  # Eq. (8), ascending
    Yk = Y.flip(-1)[:, :, :k].transpose(1, 2).to(x.dtype)  # (B, k, m), descending theta
    if subspace is None:
        U = torch.bmm(Yk, K, out=_scratch(work, "U", (B, k, d), x) if out is None else out)  # Eq. (8)
    else:
        Uy = torch.bmm(Yk, K, out=_scratch(work, "Uy", (B, k, d), x))  # Eq. (8) in coordinates y
        U = _scratch(work, "U", (B, k, basis.shape[1]), x) if out is None else out
        torch.mm(Uy.view(B * k, d), basis, out=U.view(B * k, -1))  # v = V_r y, Eq. (9)
    # sigma_i = ||J v_i|| from P rather than sqrt(theta_i): the square root of a Gram eigenvalue
    # has an absolute error of sqrt(eps) sigma_1, the norm only eps sigma_1 (small sigma_i stay small)
    S = torch.linalg.vector_norm(torch.bmm(Yk, P, out=_scratch(work, "JU", (B, k, n_L), x)), dim=-1)
    return U, S


def _rank_within(s: torch.Tensor, rank_tol: float) -> int:
    """The fewest leading singular values s_1 >= s_2 >= ... whose discarded tail carries at
    most ``rank_tol`` of the squared total: min r such that sum_{i>r} s_i^2 <= rank_tol sum s_i^2."""
    tail = (s.double() ** 2).flip(0).cumsum(0).flip(0)  # tail[i] = sum_{j >= i} s_j^2 (0-based)
    return int((tail > rank_tol * tail[0]).sum())


def _input_subspace(params, m: int, rank_tol: float, dtype, device, k: int = 0):
    """Eq. (9): ``(reduced params, V_r^T (r, d))`` for the products, or None for the whole space.

    r is the fewest leading right singular vectors of W_1 whose discarded singular values
    carry at most ``rank_tol`` of ``||W_1||_F^2``, and at least m (the Krylov space must fit
    in it), rounded up to a multiple of 16 (aligned rows). None, the whole input space, when
    that saves less than it costs: Eqs. (6)-(8) make 2m products, so the restriction saves
    ``2 m n_1 (d - r)`` multiply-adds per example and mapping the k tangents back costs
    ``k r d``. The SVD is taken once per call, in float64 on the CPU.
    """
    W1, b1, unit1 = params[0]
    if not isinstance(W1, torch.Tensor):  # a convolution: no weight matrix to restrict
        return None
    n1, d = W1.shape
    if min(m, n1) >= d:  # nothing to restrict
        return None
    W1 = W1.detach().double().cpu()
    with one_thread():  # the same V_r whatever the thread count: reproducible tangents
        _, s, Vh = torch.linalg.svd(W1, full_matrices=n1 < d)
    r = min(-(-max(_rank_within(s, rank_tol), m) // 16) * 16, d)
    if r >= d or 2 * m * n1 * (d - r) <= k * r * d:
        return None
    Vt = Vh[:r]
    reduced = [((W1 @ Vt.T).to(device=device, dtype=dtype), b1, unit1)]
    return reduced + list(params[1:]), Vt.to(device=device, dtype=dtype).contiguous()


def search_space(stack: Stack, k: int, *, oversample: int = OVERSAMPLE,
                 rank_tol: float = RANK_TOL) -> torch.Tensor | None:
    """V_r^T (r, d) of Eq. (9): the orthonormal rows that span where ``tangents(stack, X, k,
    oversample=, rank_tol=)`` looks for the tangents with the Krylov method, or None when it
    searches the whole input space."""
    m = krylov_dim(check_int("k", k, 1), check_int("oversample", oversample, 0), stack.n_visible)
    sub = _input_subspace(linear_maps(stack), m, _check_rank_tol(rank_tol), stack[0].encoder_weight.dtype,
                          "cpu", k)
    return None if sub is None else sub[1]


def explicit_jacobian(stack: Stack, x: torch.Tensor) -> torch.Tensor:
    """J(x) of Eq. (2) for a batch, (B, d) -> (B, n_L, d), from the cheaper of (3) and (4).

    Memory is B n_L d: call it on batches, not on a whole data set.
    """
    _check_input(stack, x)
    params = linear_maps(stack)
    _, slopes = _forward(params, x)
    B, d = x.shape
    n_L = stack.n_hidden
    if n_L <= d:  # rows of J = J^T e_i
        eye = torch.eye(n_L, dtype=x.dtype, device=x.device).expand(B, n_L, n_L)
        return _vjp_rows(params, slopes, eye.contiguous())
    eye = torch.eye(d, dtype=x.dtype, device=x.device).expand(B, d, d)
    return _jvp_rows(params, slopes, eye.contiguous()).transpose(1, 2)


def _explicit_batch(stack, x, k):
    """Exact tangents of one batch through the SVD of the explicit Jacobian: U (B, k, d), S (B, k)."""
    J = explicit_jacobian(stack, x)  # (B, n_L, d)
    with one_thread():
        _, S, Vh = torch.linalg.svd(J, full_matrices=False)  # Eq. (5)
    return Vh[:, :k], S[:, :k]


# -- the tangents of a data set ---------------------------------------------------------------
def _check_rank_tol(rank_tol) -> float:
    return check_float("rank_tol", rank_tol, low=0, high=1,
                       meaning="the fraction of ||W_1||_F^2 the search space may leave out (0: none)")


def _resolve(stack: Stack, X: torch.Tensor, k: int, oversample: int, block_size: int,
             batch_size: int, method: str, rank_tol: float = 0.0) -> tuple[str, int]:
    """Validate the arguments of ``tangents``; return the method and the Krylov dimension m."""
    _check_input(stack, X, "X")
    k, oversample = check_int("k", k, 1), check_int("oversample", oversample, 0)
    block_size = check_int("block_size", block_size, 1)
    check_int("batch_size", batch_size, 1)
    _check_rank_tol(rank_tol)
    check_choice("method", method, METHODS)
    d, n_L = stack.n_visible, stack.n_hidden
    if k > n_L:
        raise ValueError(f"k={k} tangents asked but the stack's top code has n_hidden={n_L}: "
                         f"J(x) is ({n_L}, {d}) and has at most {n_L} non-zero singular values; "
                         f"ask for k <= {n_L}")
    if k > d:
        raise ValueError(f"k={k} tangents asked but the input has only d={d} dimensions")
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or inf: tangents are only defined at finite inputs")
    m = krylov_dim(k, oversample, d)
    if method == "auto":
        method = "explicit" if min(n_L, d) <= krylov_products(m, block_size) else "krylov"
    return method, m


def check_options(stack: Stack, X: torch.Tensor, k: int, *, oversample: int = OVERSAMPLE,
                  block_size: int = 1, rank_tol: float = RANK_TOL, batch_size: int = 512,
                  seed: int = 0, method: str = "auto") -> None:
    """Raise the ``ValueError`` that ``tangents`` would for these arguments, computing nothing."""
    _resolve(stack, X, k, oversample, block_size, batch_size, method, rank_tol)


def krylov_dim(k: int, oversample: int, d: int) -> int:
    """m, the dimension of the Krylov space for k tangents of d-dimensional inputs."""
    return min(k + oversample, d)


def krylov_products(m: int, block_size: int) -> int:
    """Products with J or J^T per example of Eqs. (6)-(8) for m Krylov vectors in blocks of b."""
    b = min(block_size, m)
    return b + m + (m - (m % b or b))


def _batch_seed(seed: int, batch: int) -> int:
    """The seed of one batch's random start: a function of (seed, batch) only, not of the order
    in which the workers run the batches."""
    digest = hashlib.sha256(f"tangents {seed} {batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _map(run, n: int, workers: int) -> None:
    """``run(0) .. run(n - 1)``, in ``workers`` threads of one intra-op thread each when > 1.

    On CPU the batches are independent, so the cores share them out rather than split every
    matmul and elementwise op: torch's intra-op parallelism waits for the slowest core at the
    end of each op, so on a shared machine one busy core holds up every op, while one-thread
    workers each lose only the time of their own core. The ops release the GIL.
    """
    if workers <= 1:
        for batch in range(n):
            run(batch)
        return
    with one_thread(), ThreadPoolExecutor(workers) as pool:  # workers read 1 when they start
        for _ in pool.map(run, range(n)):  # re-raises a worker's exception
            pass


@torch.no_grad()
def tangents(stack: Stack, X: torch.Tensor, k: int, *, oversample: int = OVERSAMPLE,
             block_size: int = 1, rank_tol: float = RANK_TOL, batch_size: int = 512, seed: int = 0,
             method: str = "auto",
             device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The MTC's tangents B_x of Eq. (5) for every row of X, batched and matrix-free.

    Parameters
    ----------
    stack : the pretrained stack; J(x) is the Jacobian of its top code.
    X : (N, d) inputs.
    k : number of tangents per example (``1 <= k <= min(n_hidden, d)``).
    oversample : Krylov vectors beyond k: the space of Eq. (7) has ``m = k + oversample``
        dimensions (at most d). More is more accurate and proportionally slower (about 2 m
        products with J per example).
    block_size : b, vectors per Krylov block; the space holds polynomials of degree about m / b
        in J^T J. Smaller blocks converge faster per product (b = 1, Lanczos, the fastest at
        equal accuracy on MNIST), larger ones resolve clusters of equal singular values.
    rank_tol : the Krylov method looks for the tangents in the span of W_1's leading right
        singular vectors that hold all but this fraction of ``||W_1||_F^2`` (Eq. (9)); 0 keeps
        W_1's whole row space (exact). Cheaper first-layer products when W_1 is numerically
        low-rank, as pretraining makes it; no effect on the explicit method.
    batch_size : examples per batch (memory about ``batch_size * m * (d + n_hidden)`` numbers
        per worker thread).
    seed : seed of the random start Omega, drawn per batch from (seed, batch index); results
        depend on it and on batch_size, within the method's accuracy, not on the thread count.
    method : ``"auto"`` (the explicit SVD when J costs no more products with J than the
        Krylov method, ``min(n_hidden, d) <= krylov_products(m, block_size)``, else Krylov),
        ``"krylov"`` or ``"explicit"``.
    device : where the products run (e.g. ``"cuda"``); default: the stack's device. The stack
        itself stays where it is (the explicit method works on a copy). On CPU the batches go
        to ``torch.get_num_threads()`` worker threads of one intra-op thread each.

    Returns
    -------
    U : (N, k, d) orthonormal rows: the k leading right singular vectors of J(x), each with its
        largest entry positive.
    S : (N, k) the singular values, descending.

    Computed in the stack's dtype (X is converted), on ``device``; returned on X's device.
    """
    method, m = _resolve(stack, X, k, oversample, block_size, batch_size, method, rank_tol)
    W0 = stack[0].encoder_weight
    dtype = W0.dtype
    device = W0.device if device is None else torch.device(device)
    params = [(W.detach().to(device), b.detach().to(device), unit) for W, b, unit in linear_maps(stack)]
    if method == "explicit" and device != W0.device:
        stack = copy.deepcopy(stack).to(device)
    subspace = _input_subspace(params, m, rank_tol, dtype, device, k) if method == "krylov" else None
    was = stack.training
    stack.eval()
    N, d = X.shape
    U = torch.empty(N, k, d, dtype=dtype, device=X.device)
    S = torch.empty(N, k, dtype=dtype, device=X.device)
    starts = range(0, N, batch_size)
    local = threading.local()  # one workspace per worker thread, reused by its batches

    @torch.no_grad()  # grad mode is per thread
    def run(batch: int) -> None:
        i = starts[batch]
        x = X[i:i + batch_size].to(device=device, dtype=dtype)
        out = None
        if method == "explicit":
            u, s = _explicit_batch(stack, x, k)
        else:
            if not hasattr(local, "work"):
                local.work = {}
            generator = torch.Generator(device=device).manual_seed(_batch_seed(seed, batch))
            out = U[i:i + batch_size] if U.device == device else None  # no copy of U
            u, s = _krylov_batch(params, x, k, m, min(block_size, m), generator, local.work, out,
                                 subspace)
        _fix_signs(u)
        if out is None:
            U[i:i + batch_size] = u.to(X.device)
        S[i:i + batch_size] = s.to(X.device)

    workers = min(torch.get_num_threads(), len(starts)) if device.type == "cpu" else 1
    try:
        _map(run, len(starts), workers)
    finally:
        stack.train(was)
    return U, S
