"""Tangents: J V and J^T U against autograd, the Krylov tangents against the explicit SVD."""

import pytest
import torch

import finetune.tangents as tg
from finetune.tangents import explicit_jacobian, jvp, tangents, vjp
from pretrain.autoencoder import AutoEncoder
from pretrain.rbm import RBM
from pretrain.stack import Stack


def _stack(sizes, units, *, rbm_on_top=False, seed=0, dtype=torch.float64):
    layers = [AutoEncoder(a, c, hidden_unit=u, seed=seed + i)
              for i, (a, c, u) in enumerate(zip(sizes[:-1], sizes[1:], units))]
    if rbm_on_top:
        layers[-1] = RBM(sizes[-2], sizes[-1], seed=seed + 10)
    return Stack(layers).to(dtype)


def _x(n, d, seed=0, dtype=torch.float64):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _autograd_jacobian(stack, x):
    """(B, n_L, d): the per-example blocks of the jacobian of the batched encode."""
    full = torch.autograd.functional.jacobian(stack.encode, x)  # (B, n_L, B, d)
    idx = torch.arange(len(x))
    return full[idx, :, idx]


def _angle(U, V):
    """Largest principal angle (radians) between the row spaces of U and V, per example."""
    cos = torch.linalg.svdvals(U.double() @ V.double().transpose(1, 2)).clamp(max=1.0)
    return torch.arccos(cos).amax(-1)


STACKS = [
    ((12, 9, 7, 5), ("sigmoid", "tanh", "sigmoid"), True),   # two autoencoders and an RBM on top
    ((10, 8, 6), ("relu", "linear"), False),
    ((6, 9, 11), ("tanh", "sigmoid"), True),                  # n_L > d: the other explicit branch
]


@pytest.mark.parametrize("sizes,units,rbm", STACKS)
def test_jvp_vjp_and_explicit_jacobian_match_autograd(sizes, units, rbm):
    stack = _stack(sizes, units, rbm_on_top=rbm)
    x = _x(4, sizes[0]) * 2 - 1
    J_ref = _autograd_jacobian(stack, x)  # (4, n_L, d)
    assert J_ref.abs().max() > 1e-3  # a dead Jacobian would make the comparisons vacuous
    g = torch.Generator().manual_seed(1)
    V = torch.randn(4, sizes[0], 3, generator=g, dtype=torch.float64)
    U = torch.randn(4, sizes[-1], 2, generator=g, dtype=torch.float64)
    h, JV = jvp(stack, x, V)
    torch.testing.assert_close(h, stack.encode(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(JV, J_ref @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vjp(stack, x, U), J_ref.transpose(1, 2) @ U, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(explicit_jacobian(stack, x), J_ref, rtol=1e-10, atol=1e-12)


def test_gaussian_rbm_jacobian_uses_the_scaled_weight():
    stack = Stack([RBM(10, 7, visible="gaussian", sigma=0.5, seed=3),
                   AutoEncoder(7, 4, hidden_unit="tanh", seed=4)]).double()
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(explicit_jacobian(stack, x), _autograd_jacobian(stack, x),
                               rtol=1e-10, atol=1e-12)


def test_adjoint_identity():
    stack = _stack((64, 30, 12), ("sigmoid", "tanh"))
    x = _x(5, 64)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(5, 64, 4, generator=g, dtype=torch.float64)
    u = torch.randn(5, 12, 4, generator=g, dtype=torch.float64)
    lhs = (jvp(stack, x, v)[1] * u).sum((1, 2))  # <J v, u>
    rhs = (v * vjp(stack, x, u)).sum((1, 2))  # <v, J^T u>
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=0)
    assert lhs.abs().min() > 1e-3


def _exact(stack, X):
    _, S, Vh = torch.linalg.svd(explicit_jacobian(stack, X).detach())
    return Vh, S


def test_krylov_tangents_match_the_svd_below_full_rank():
    # m = k + oversample = 30 Krylov vectors for a Jacobian of rank 40: a genuine approximation
    stack = _stack((64, 48, 40), ("sigmoid", "tanh"))
    X = _x(8, 64)
    Vh, S_ref = _exact(stack, X)
    U, S = tangents(stack, X, 5, oversample=25, rank_tol=0, method="krylov")
    assert _angle(U, Vh[:, :5]).max() < 1e-3
    torch.testing.assert_close(S, S_ref[:, :5], rtol=1e-4, atol=0)
    # fewer Krylov vectors, a visibly worse subspace: the size of the space is what buys accuracy
    U_small, _ = tangents(stack, X, 5, oversample=5, rank_tol=0, method="krylov")
    assert _angle(U_small, Vh[:, :5]).max() > 10 * _angle(U, Vh[:, :5]).max()


@pytest.mark.parametrize("method", ["krylov", "explicit", "auto"])
def test_tangents_exact_when_the_space_holds_the_row_space(method):
    # stack 64-30-12: rank J <= 12 <= m = 5 + 7, so every method is exact
    stack = _stack((64, 30, 12), ("sigmoid", "sigmoid"))
    X = _x(8, 64)
    Vh, S_ref = _exact(stack, X)
    U, S = tangents(stack, X, 5, oversample=7, block_size=3, rank_tol=0, method=method)
    assert _angle(U, Vh[:, :5]).max() < 1e-6
    torch.testing.assert_close(S, S_ref[:, :5], rtol=1e-10, atol=0)
    torch.testing.assert_close(U @ U.transpose(1, 2), torch.eye(5, dtype=U.dtype).expand(8, 5, 5),
                               rtol=0, atol=1e-12)
    assert (S[:, 1:] <= S[:, :-1]).all()
    top = U.gather(-1, U.abs().argmax(-1, keepdim=True))
    assert (top > 0).all()  # sign convention: the largest entry of every tangent is positive


@pytest.mark.parametrize("method", ["krylov", "explicit"])
def test_k_beyond_the_rank_gives_zero_singular_values_and_an_orthonormal_completion(method):
    # linear units and W_1 of rank 3: J = W_2 W_1 has rank 3 < k = 5
    g = torch.Generator().manual_seed(4)
    stack = Stack([AutoEncoder(20, 10, hidden_unit="linear", seed=0),
                   AutoEncoder(10, 8, hidden_unit="linear", seed=1)]).double()
    with torch.no_grad():  # built in float64: a float32 product has rank 3 only up to rounding
        stack[0].W.copy_(torch.randn(10, 3, generator=g, dtype=torch.float64)
                         @ torch.randn(3, 20, generator=g, dtype=torch.float64))
    X = _x(4, 20)
    Vh, S_ref = _exact(stack, X)
    U, S = tangents(stack, X, 5, oversample=0 if method == "explicit" else 2, method=method)
    torch.testing.assert_close(S[:, :3], S_ref[:, :3], rtol=1e-10, atol=0)
    assert S[:, 3:].abs().max() < 1e-10 * S[:, 0].min()
    assert _angle(U[:, :3], Vh[:, :3]).max() < 1e-6  # the row space is found exactly
    torch.testing.assert_close(U @ U.transpose(1, 2), torch.eye(5, dtype=U.dtype).expand(4, 5, 5),
                               rtol=0, atol=1e-10)


def test_cluster_of_equal_singular_values():
    # one linear layer W = 3 Q_1 + Q_2 (orthonormal rows): sigma = 3 three times, then 1
    g = torch.Generator().manual_seed(5)
    Q = torch.linalg.qr(torch.randn(30, 8, generator=g, dtype=torch.float64))[0].T  # (8, 30)
    layer = AutoEncoder(30, 8, hidden_unit="linear", seed=0).double()
    with torch.no_grad():
        layer.W.copy_(Q * torch.tensor([3.0, 3, 3, 1, 1, 1, 1, 1], dtype=torch.float64)[:, None])
    stack = Stack([layer])
    X = _x(3, 30)
    for method, oversample in (("krylov", 3), ("explicit", 0)):
        # k = 3 spans the whole cluster: the subspace is defined although its basis is not
        U, S = tangents(stack, X, 3, oversample=oversample, block_size=3, method=method)
        torch.testing.assert_close(S, torch.full_like(S, 3.0), rtol=1e-10, atol=0)
        assert _angle(U, Q[None, :3].expand(3, 3, 30)).max() < 1e-6
        # k = 2 inside the cluster: any two directions of it are right; they must lie in it
        U, S = tangents(stack, X, 2, oversample=oversample + 1, block_size=3, method=method)
        torch.testing.assert_close(S, torch.full_like(S, 3.0), rtol=1e-10, atol=0)
        outside = U - (U @ Q[:3].T) @ Q[:3]
        assert outside.abs().max() < 1e-8


def test_bad_arguments_raise_naming_the_problem():
    stack = _stack((64, 30, 12), ("sigmoid", "sigmoid"))
    X = _x(4, 64)
    with pytest.raises(ValueError, match=r"k=13 .* at most 12 non-zero singular values"):
        tangents(stack, X, 13)
    with pytest.raises(ValueError, match=r"X must have shape \(B, 64\)"):
        tangents(stack, X[:, :10], 3)
    with pytest.raises(ValueError, match="oversample must be an integer >= 0, got -1"):
        tangents(stack, X, 3, oversample=-1)
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        tangents(stack, X, 0)
    with pytest.raises(ValueError, match="unknown method 'lanczos'"):
        tangents(stack, X, 3, method="lanczos")
    bad = X.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        tangents(stack, bad, 3)
    with pytest.raises(ValueError, match=r"V must have shape \(4, 64, m\)"):
        jvp(stack, X, torch.zeros(4, 12, 2, dtype=X.dtype))


def test_seeded_and_float32_agrees_with_float64():
    stack = _stack((64, 48, 40), ("sigmoid", "tanh"))
    X = _x(8, 64)
    opts = dict(oversample=25, rank_tol=0, method="krylov", batch_size=5)
    U1, S1 = tangents(stack, X, 5, **opts)
    U2, S2 = tangents(stack, X, 5, **opts)
    assert torch.equal(U1, U2) and torch.equal(S1, S2)
    U3, _ = tangents(stack, X, 5, **{**opts, "seed": 1})
    assert not torch.equal(U1, U3)  # the seed does drive the random start
    assert _angle(U1, U3).max() < 2e-3  # ... and both converge to the same subspace
    U32, S32 = tangents(stack.float(), X.float(), 5, **opts)
    assert U32.dtype == torch.float32
    assert _angle(U32, U1).max() < 5e-3
    torch.testing.assert_close(S32.double(), S1, rtol=1e-4, atol=0)
    # float X with a double stack: computed in the stack's dtype
    assert tangents(stack.double(), X.float(), 5, **opts)[0].dtype == torch.float64


def test_jvp_is_differentiable_in_the_weights():
    # J V may sit inside a training loss (a higher-order penalty): its gradient must be right
    stack = _stack((9, 7, 5), ("sigmoid", "tanh"))
    x = _x(3, 9)
    V = torch.randn(3, 9, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    params = list(stack.parameters())
    params = [p for p in params if p.requires_grad]
    got = torch.autograd.grad((jvp(stack, x, V)[1] ** 2).sum(), params, allow_unused=True)
    J = torch.autograd.functional.jacobian(stack.encode, x, create_graph=True)
    idx = torch.arange(3)
    ref = torch.autograd.grad(((J[idx, :, idx] @ V) ** 2).sum(), params, allow_unused=True)
    for g, r in zip(got, ref):
        if r is None:
            assert g is None or g.abs().max() == 0
        else:
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert any(r is not None and r.abs().max() > 1e-3 for r in ref)


def test_lanczos_matches_the_svd_over_uneven_batches_and_blocks_agree():
    # 11 rows in batches of 4, 4, 3: each worker's scratch buffers are reused, then resized
    stack = _stack((64, 48, 40), ("sigmoid", "tanh"))
    X = _x(11, 64)
    Vh, S_ref = _exact(stack, X)
    U, S = tangents(stack, X, 5, oversample=25, block_size=1, batch_size=4, rank_tol=0,
                    method="krylov")
    assert _angle(U, Vh[:, :5]).max() < 1e-3
    torch.testing.assert_close(S, S_ref[:, :5], rtol=1e-4, atol=0)
    torch.testing.assert_close(U @ U.transpose(1, 2), torch.eye(5, dtype=U.dtype).expand(11, 5, 5),
                               rtol=0, atol=1e-12)
    U4, S4 = tangents(stack, X, 5, oversample=25, block_size=4, batch_size=4, rank_tol=0,
                      method="krylov")
    assert _angle(U, U4).max() < 2e-3
    torch.testing.assert_close(S, S4, rtol=1e-4, atol=0)


def test_results_do_not_depend_on_the_thread_count_and_threads_are_restored():
    stack = _stack((64, 48, 40), ("sigmoid", "tanh"))
    X = _x(14, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # one batch after the other, in this thread
        U1, S1 = tangents(stack, X, 5, batch_size=4, method="krylov")
        torch.set_num_threads(2)  # four batches shared out to two worker threads
        U2, S2 = tangents(stack, X, 5, batch_size=4, method="krylov")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(U1, U2) and torch.equal(S1, S2)


def test_a_failing_batch_raises_and_restores_the_thread_count(monkeypatch):
    stack = _stack((64, 30, 12), ("sigmoid", "sigmoid"))
    X = _x(9, 64)
    real = tg._krylov_batch

    def fail_on_the_second_batch(params, x, *args):
        if len(x) == 3:
            raise RuntimeError("batch failed")
        return real(params, x, *args)

    monkeypatch.setattr(tg, "_krylov_batch", fail_on_the_second_batch)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="batch failed"):
            tangents(stack, X, 3, batch_size=6, method="krylov")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def _low_rank_stack(singular_values, n_top=12, seed=7):
    """A 64-40-n_top sigmoid stack whose W_1 (40, 64) has the given singular values."""
    g = torch.Generator().manual_seed(seed)
    stack = _stack((64, 40, n_top), ("sigmoid", "tanh"), seed=seed)
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    left = torch.linalg.qr(torch.randn(40, len(s), generator=g, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(64, len(s), generator=g, dtype=torch.float64))[0]
    with torch.no_grad():
        stack[0].W.copy_((left * s) @ right.T)
    return stack


def test_the_search_space_keeps_the_fewest_directions_within_rank_tol():
    # squared singular values 16 x 4.0, then 8 x 0.01 and 16 x 0.0001: ||W_1||_F^2 = 64.0816
    s = torch.tensor([2.0] * 16 + [0.1] * 8 + [0.01] * 16, dtype=torch.float64)
    # the tail after r directions, over 64.0816: r = 16: 0.0816 (1.27e-3); 18: 0.0616 (9.6e-4),
    # 17: 0.0716 (1.1e-3); 23: 0.0116 (1.8e-4), 24: 0.0016 (2.5e-5); 27: 0.0013 (2.03e-5),
    # 28: 0.0012 (1.87e-5)
    for rank_tol, r in ((0.0, 40), (2e-5, 28), (3e-5, 24), (1e-3, 18), (0.0013, 16), (0.01, 16)):
        assert tg._rank_within(s, rank_tol) == r
    # the subspace: r rounded up to aligned rows, never fewer than m, orthonormal, exact products
    params = tg.encoder_params(_low_rank_stack(s))
    for m, rank_tol, r in ((5, 0.01, 16), (5, 1e-3, 32), (20, 0.01, 32)):
        reduced, Vt = tg._input_subspace(params, m, rank_tol, torch.float64, "cpu", k=5)
        assert Vt.shape == (r, 64)
        torch.testing.assert_close(Vt @ Vt.T, torch.eye(r, dtype=Vt.dtype), rtol=0, atol=1e-12)
        torch.testing.assert_close(reduced[0][0], params[0][0] @ Vt.T, rtol=1e-12, atol=1e-12)
    # none when nothing is dropped, or when mapping k tangents back costs more than it saves:
    # rank_tol = 0 keeps W_1's row space, 40 -> 48 directions: 2 m n_1 (d - r) = 2 * 5 * 40 * 16
    # = 6400 multiply-adds saved, k r d = 5 * 48 * 64 = 15360 spent, but 3072 for k = 1
    full = tg.encoder_params(_stack((8, 12, 4), ("sigmoid", "sigmoid")))
    assert tg._input_subspace(full, 6, 0.0, torch.float64, "cpu", k=4) is None
    assert tg._input_subspace(params, 5, 0.0, torch.float64, "cpu", k=5) is None
    assert tg._input_subspace(params, 5, 0.0, torch.float64, "cpu", k=1)[1].shape == (48, 64)


def test_restricted_tangents_are_the_svd_of_the_jacobian_on_the_search_space():
    # a generic W_1 and rank_tol = 0.1: the tangents are the exact top-k right singular
    # vectors of J V_r^T (the products there are exact), mapped back to the input space
    stack = _stack((64, 48, 40), ("sigmoid", "tanh"))
    X = _x(8, 64)
    _, Vt = tg._input_subspace(tg.encoder_params(stack), 20, 0.1, torch.float64, "cpu", k=5)
    r = Vt.shape[0]
    assert r == 32  # a real restriction of W_1's 48-dimensional row space
    J = explicit_jacobian(stack, X)
    _, S_sub, Vh_sub = torch.linalg.svd(J @ Vt.T)  # (8, 40, r)
    U, S = tangents(stack, X, 5, oversample=r - 5, rank_tol=0.1, method="krylov")
    assert _angle(U, Vh_sub[:, :5] @ Vt).max() < 1e-6
    torch.testing.assert_close(S, S_sub[:, :5], rtol=1e-10, atol=0)
    torch.testing.assert_close(S, torch.linalg.vector_norm(J @ U.transpose(1, 2), dim=1),
                               rtol=1e-10, atol=0)  # S is ||J u_i|| for the true J
    # ... which is not the unrestricted answer: the directions left out carried energy
    Vh, S_ref = _exact(stack, X)
    assert _angle(U, Vh[:, :5]).max() > 1e-3
    assert (S <= S_ref[:, :5] * (1 + 1e-12)).all()


def test_a_numerically_low_rank_w1_loses_almost_nothing():
    # W_1 of rank 16 plus a small full-rank part: rank_tol = 0.01 keeps 16 of 40 directions
    s = [2.0] * 16 + [0.02] * 24
    stack = _low_rank_stack(s, n_top=30)
    X = _x(8, 64)
    Vh, S_ref = _exact(stack, X)
    U, S = tangents(stack, X, 5, oversample=11, rank_tol=0.01, method="krylov")
    energy = (torch.linalg.vector_norm(explicit_jacobian(stack, X) @ U.transpose(1, 2), dim=1) ** 2
              ).sum(1) / (S_ref[:, :5] ** 2).sum(1)
    assert energy.min() > 0.9998
    assert _angle(U, Vh[:, :5]).max() < 0.02
    U0, _ = tangents(stack, X, 5, oversample=11, rank_tol=0.0, method="krylov")
    assert _angle(U, U0).max() > 1e-6  # the restriction did change the answer, a little


def test_rank_tol_is_checked():
    stack = _stack((64, 30, 12), ("sigmoid", "sigmoid"))
    X = _x(3, 64)
    for bad in (-0.1, 1.0, "0.01", True):
        with pytest.raises(ValueError, match=r"rank_tol must be a number in \[0, 1\)"):
            tangents(stack, X, 3, rank_tol=bad)
        with pytest.raises(ValueError, match=r"rank_tol must be a number in \[0, 1\)"):
            tg.search_space(stack, 3, rank_tol=bad)
    # search_space says where tangents looks: None for a generic W_1 with n_1 >= d (r rounds up
    # to d), 32 rows here (n_1 = 30 < d: the row space is all there is), 16 for a low-rank W_1
    assert tg.search_space(_stack((64, 80, 12), ("sigmoid", "sigmoid")), 3) is None
    assert tg.search_space(stack, 3).shape == (32, 64)
    Vt = tg.search_space(_low_rank_stack([2.0] * 16 + [0.02] * 24), 5)
    assert Vt.shape == (16, 64)
