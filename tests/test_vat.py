"""Virtual adversarial training: the power iteration against the closed-form Fisher matrix of a
linear softmax model, the penalty's zero and its weight gradient, and the module's terms."""
import pytest
import torch
import torch.nn.functional as F

from finetune.classifier import Classifier
from finetune.unroll import UnrolledEncoder
from finetune.vat import (VAT, adversarial_direction, entropy_from_logits, kl_from_logits,
                          virtual_adversarial_loss)
from pretrain.autoencoder import AutoEncoder
from pretrain.stack import Stack

D, C = 6, 4


def linear(W, b):
    return lambda x: x @ W.T + b


def fisher(W, b, x):
    """H(x) = W^T (diag p - p p^T) W of a linear softmax model at one input x (d,): (d, d)."""
    p = torch.softmax(W @ x + b, dim=0)
    return W.T @ (torch.diag(p) - torch.outer(p, p)) @ W


@pytest.fixture
def model():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(C, D, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    x = torch.randn(3, D, generator=g, dtype=torch.float64)
    d0 = torch.randn(3, D, generator=g, dtype=torch.float64)
    return W, b, x, d0


def cos(u, v):
    return float((u @ v).abs() / (u.norm() * v.norm()))


def test_two_classes_one_iteration_gives_the_fisher_eigenvector(model):
    """With 2 classes H = p_1 p_2 (w_1 - w_2)(w_1 - w_2)^T has rank 1: one iteration from any
    start lands on its only eigenvector."""
    W, b, x, d0 = model
    W2, b2 = W[:2], b[:2]
    d = adversarial_direction(linear(W2, b2), x, xi=1e-6, n_power=1, d=d0)
    for n in range(len(x)):
        eigval, eigvec = torch.linalg.eigh(fisher(W2, b2, x[n]))
        assert eigval[-2].abs() < 1e-12 * eigval[-1]  # rank 1
        assert cos(d[n], eigvec[:, -1]) > 1 - 1e-8
        assert cos(d[n], W2[0] - W2[1]) > 1 - 1e-8
    assert torch.allclose(d.norm(dim=1), torch.ones(len(x), dtype=torch.float64))


def test_one_iteration_is_one_fisher_product_and_many_find_the_leading_eigenvector(model):
    W, b, x, d0 = model
    one = adversarial_direction(linear(W, b), x, xi=1e-6, n_power=1, d=d0)
    many = adversarial_direction(linear(W, b), x, xi=1e-6, n_power=200, d=d0)
    for n in range(len(x)):
        H = fisher(W, b, x[n])
        assert cos(one[n], H @ d0[n]) > 1 - 1e-8  # Eq. (3): d <- H d / ||H d||
        eigval, eigvec = torch.linalg.eigh(H)
        assert eigval[-1] > 1.2 * eigval[-2]  # a gap, so the iteration converges
        assert cos(many[n], eigvec[:, -1]) > 1 - 1e-6
        assert cos(one[n], eigvec[:, -1]) < 1 - 1e-3  # one step from a random start is not there yet


def test_penalty_is_half_the_leading_eigenvalue_times_epsilon_squared(model):
    """Eq. (2) at r_adv = epsilon v_1: LDS ~= epsilon^2 lambda_1 / 2 for a small epsilon."""
    W, b, x, d0 = model
    eps = 1e-3
    lds = virtual_adversarial_loss(linear(W, b), x, epsilon=eps, xi=1e-6, n_power=200, d=d0)
    for n in range(len(x)):
        lam = torch.linalg.eigvalsh(fisher(W, b, x[n]))[-1]
        assert float(lds[n]) == pytest.approx(0.5 * eps ** 2 * float(lam), rel=1e-2)


def test_penalty_and_direction_vanish_for_a_constant_classifier(model):
    _, b, x, d0 = model
    W = torch.zeros(C, D, dtype=torch.float64)  # logits = b whatever x: a constant classifier
    d = adversarial_direction(linear(W, b), x, xi=1e-6, n_power=3, d=d0)
    assert torch.equal(d, torch.zeros_like(d))
    lds = virtual_adversarial_loss(linear(W, b), x, epsilon=2.0, xi=1e-6, n_power=1, d=d0)
    assert torch.equal(lds, torch.zeros(len(x), dtype=torch.float64))
    # and a non-constant one is penalised
    assert float(virtual_adversarial_loss(linear(model[0], b), x, epsilon=2.0, xi=1e-6,
                                          n_power=1, d=d0).min()) > 1e-3


def test_weight_gradient_of_the_penalty_in_closed_form(model):
    """With r_adv and p(. | x) held constant (Eqs. 1, 5), d LDS / d logits' = q - p at
    logits' = W (x + r_adv) + b: grad_W = sum_n (q_n - p_n)(x_n + r_n)^T, grad_b = sum_n (q_n - p_n)."""
    W, b, x, d0 = model
    W, b = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
    eps = 0.5
    lds = virtual_adversarial_loss(linear(W, b), x, epsilon=eps, xi=1e-6, n_power=1, d=d0)
    gW, gb = torch.autograd.grad(lds.sum(), (W, b))
    r = eps * adversarial_direction(linear(W, b), x, xi=1e-6, n_power=1, d=d0)  # the same r_adv
    with torch.no_grad():
        p = torch.softmax(x @ W.T + b, dim=1)
        q = torch.softmax((x + r) @ W.T + b, dim=1)
    assert torch.allclose(gW, (q - p).T @ (x + r), atol=1e-12)
    assert torch.allclose(gb, (q - p).sum(0), atol=1e-12)
    # the same by central finite differences of Eq. (5) at the fixed r_adv and target p
    h, k = 1e-6, (1, 2)
    lds_at = lambda Wk: kl_from_logits(x @ W.detach().T + b.detach(), (x + r) @ Wk.T + b.detach()).sum()
    E = torch.zeros_like(W)
    E[k] = h
    fd = (lds_at(W.detach() + E) - lds_at(W.detach() - E)) / (2 * h)
    assert float(fd) == pytest.approx(float(gW[k]), rel=1e-6)


def test_kl_and_entropy_from_logits_in_closed_form():
    lp, lq = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    p, q = torch.softmax(lp, 1)[0], torch.softmax(lq, 1)[0]
    assert float(kl_from_logits(lp, lq)) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-6)
    assert float(kl_from_logits(lp, lp)) == 0.0
    assert float(entropy_from_logits(torch.zeros(1, 4))) == pytest.approx(float(torch.log(torch.tensor(4.0))))


# -- the module ---------------------------------------------------------------------------------

@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return UnrolledEncoder(Stack([AutoEncoder(8, 5, seed=1)]))


def test_without_penalty_vat_is_the_classifier_term_for_term(encoder):
    torch.manual_seed(1)
    x, y = torch.rand(10, 8), torch.randint(0, 3, (10,))
    base = Classifier(encoder, 3, seed=2)
    vat = VAT(UnrolledEncoder(Stack([AutoEncoder(8, 5, seed=1)])), 3, alpha=0.0, entropy=0.0, seed=2)
    vat.load_state_dict(base.state_dict())
    t_base = base.loss_terms((x, y), stage="train")
    t_vat = vat.loss_terms({"labeled": (x, y), "unlabeled": (torch.rand(7, 8),)}, stage="train")
    assert t_vat.keys() == t_base.keys()
    for k in t_base:
        assert torch.equal(t_vat[k], t_base[k]), k
    g_base = torch.autograd.grad(t_base["loss"], list(base.parameters()))
    g_vat = torch.autograd.grad(t_vat["loss"], list(vat.parameters()))
    for a, b in zip(g_base, g_vat):
        assert torch.equal(a, b)


@pytest.mark.parametrize("entropy, n_unlabeled", [(0.5, 6), (0.0, 6), (0.0, 0), (0.5, 0)])
def test_terms_on_labeled_and_unlabeled_rows(encoder, entropy, n_unlabeled):
    """The terms and their weight gradients are Eqs. (6)-(8) written out, whether CE shares the
    logits' pass (entropy > 0) or the target reuses CE's labeled logits (entropy 0), with and
    without a pool batch."""
    torch.manual_seed(1)
    x, y, x_u = (torch.rand(10, 8, dtype=torch.float64), torch.randint(0, 3, (10,)),
                 torch.rand(n_unlabeled, 8, dtype=torch.float64))
    # float64: the penalty is ~1e-6, where float32 rounding of the target logits moves it
    vat = VAT(encoder, 3, alpha=2.0, entropy=entropy, epsilon=0.3, seed=2).double()
    batch = {"labeled": (x, y), "unlabeled": (x_u,)} if n_unlabeled else (x, y)
    torch.manual_seed(5)
    terms = vat.loss_terms(batch, stage="train")
    x_all = torch.cat([x, x_u])
    torch.manual_seed(5)  # the same random start d
    lds = virtual_adversarial_loss(vat, x_all, epsilon=0.3, xi=1e-6, n_power=1)
    reference = {"ce": F.cross_entropy(vat(x), y), "vat": 2.0 * lds.mean()}  # Eq. (6), over all rows
    if entropy:
        reference["entropy"] = entropy * entropy_from_logits(vat(x_all)).mean()  # Eq. (7)
    assert set(terms) == {*reference, "error", "loss"}
    for k, v in reference.items():
        assert torch.allclose(terms[k], v, rtol=1e-9, atol=0), k
    assert torch.allclose(terms["loss"], sum(reference.values()))  # Eq. (8)
    assert float(terms["vat"].detach()) > 0
    params = list(vat.parameters())
    got = torch.autograd.grad(terms["loss"], params, allow_unused=True)
    want = torch.autograd.grad(sum(reference.values()), params, allow_unused=True)
    for a, b in zip(got, want):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-7, atol=1e-12))
    val = vat.loss_terms((x, y), stage="val")
    assert set(val) == {"ce", "error", "loss"}  # no penalty when evaluating


@pytest.mark.parametrize("kw, name", [({"alpha": -1.0}, "alpha"), ({"epsilon": 0.0}, "epsilon"),
                                      ({"xi": -1e-6}, "xi"), ({"n_power": 0}, "n_power"),
                                      ({"entropy": -0.1}, "entropy")])
def test_bad_settings_name_themselves(encoder, kw, name):
    with pytest.raises(ValueError, match=name):
        VAT(encoder, 3, **kw)


@pytest.fixture
def bn_vat():
    """A batch-normalised VAT in float64 (the penalty is ~1e-6, where float32 rounding shows)."""
    torch.manual_seed(0)
    enc = UnrolledEncoder(Stack([AutoEncoder(8, 5, hidden_unit="relu", seed=1)]))
    return VAT(enc, 3, alpha=2.0, epsilon=0.3, batch_norm=True, seed=2).double()


def _running(module):
    return {k: v.clone() for k, v in module.net.named_buffers()}


def test_batch_norm_normalises_each_batch_on_its_own_and_tracks_only_the_targets(bn_vat):
    """Under batch norm the labeled and the unlabeled batch are normalised each on its own: CE
    and each batch's penalty target come from its own tracked pass, the perturbed passes are
    normalised by their own batch and untracked. The terms are Eqs. (1) and (5)-(6) with those
    targets, and the running averages move twice, by Eq. (4) of ``finetune.batch_norm``: toward
    the labeled batch's statistics, then the unlabeled batch's."""
    torch.manual_seed(1)
    x, y, x_u = torch.rand(10, 8, dtype=torch.float64), torch.randint(0, 3, (10,)), torch.rand(6, 8, dtype=torch.float64)
    before = _running(bn_vat)
    torch.manual_seed(5)
    terms = bn_vat.loss_terms({"labeled": (x, y), "unlabeled": (x_u,)}, stage="train")
    after = _running(bn_vat)
    pre, pre_u = bn_vat.encoder.layers[0](x), bn_vat.encoder.layers[0](x_u)  # layer 1's pre-activations
    lerp = lambda old, new: 0.9 * old + 0.1 * new
    want_mean = lerp(lerp(before["running_mean_1"], pre.mean(0)), pre_u.mean(0))
    want_var = lerp(lerp(before["running_var_1"], pre.var(0, unbiased=False)), pre_u.var(0, unbiased=False))
    assert torch.allclose(after["running_mean_1"], want_mean, rtol=1e-12)
    assert torch.allclose(after["running_var_1"], want_var, rtol=1e-9)
    target, target_u = bn_vat.net.encode(x)["logits"], bn_vat.net.encode(x_u)["logits"]  # untracked
    assert all(torch.equal(v, after[k]) for k, v in _running(bn_vat).items())
    torch.manual_seed(5)
    lds = torch.cat([virtual_adversarial_loss(bn_vat, x, epsilon=0.3, xi=1e-6, n_power=1, logits=target),
                     virtual_adversarial_loss(bn_vat, x_u, epsilon=0.3, xi=1e-6, n_power=1, logits=target_u)])
    assert torch.allclose(terms["ce"], F.cross_entropy(target, y), rtol=1e-12)
    assert torch.allclose(terms["vat"], 2.0 * lds.mean(), rtol=1e-9)
    assert float(terms["vat"].detach()) > 0
    # at r = 0 a perturbed pass is its target's pass: D(0, x) = 0, as the power iteration needs
    assert float(kl_from_logits(target, bn_vat(x)).detach().abs().max()) < 1e-14
    # one batch of both would normalise the labeled rows by the pool's rows too: another CE
    mixed = bn_vat.net.encode(torch.cat([x, x_u]))["logits"][:10]
    assert abs(float(F.cross_entropy(mixed, y) - terms["ce"])) > 1e-3


def test_batch_norm_evaluates_on_running_averages_row_by_row(bn_vat):
    torch.manual_seed(1)
    x, y = torch.rand(10, 8, dtype=torch.float64), torch.randint(0, 3, (10,))
    bn_vat.loss_terms({"labeled": (x, y), "unlabeled": (torch.rand(6, 8, dtype=torch.float64),)}, stage="train")
    before = _running(bn_vat)
    bn_vat.eval()
    with torch.no_grad():
        whole, one = bn_vat(x), bn_vat(x[:1])
        val = bn_vat.loss_terms((x, y), stage="val")
    assert torch.allclose(whole[:1], one, rtol=1e-12)  # no batch statistics in eval
    assert torch.allclose(val["ce"], F.cross_entropy(whole, y), rtol=1e-12)
    assert set(val) == {"ce", "error", "loss"}
    assert all(torch.equal(v, before[k]) for k, v in _running(bn_vat).items())  # eval tracks nothing


def test_batch_norm_matched_to_a_stack_starts_from_its_function():
    """``match_mlp`` on a pretrained stack: the batch-normalised network computes the stack's
    codes, so its logits are the plain MLP's on the matched rows (train mode, batch statistics)."""
    torch.manual_seed(0)
    stack = Stack([AutoEncoder(8, 5, seed=1)])
    x = torch.rand(50, 8, dtype=torch.float64)
    plain = Classifier(UnrolledEncoder(stack), 3, seed=2).double()
    bn = VAT(UnrolledEncoder(stack), 3, batch_norm=True, seed=2).double()
    bn.net.match_mlp(x)
    logits_plain = plain(x)
    # the head's own normalisation stays (gamma = 1, beta = 0): equal up to its batch statistics
    z = logits_plain - logits_plain.mean(0)
    want = z / torch.sqrt(z.square().mean(0) + 1e-5)
    assert torch.allclose(bn.net.encode(x)["logits"], want, atol=1e-10)


def test_batch_norm_with_reconstruction_is_refused(encoder):
    from finetune.unroll import unroll_autoencoder
    enc, dec = unroll_autoencoder(Stack([AutoEncoder(8, 5, seed=1)]))
    with pytest.raises(ValueError, match="batch_norm=True with reconstruction"):
        VAT(enc, 3, batch_norm=True, reconstruction=0.5, decoder=dec)
