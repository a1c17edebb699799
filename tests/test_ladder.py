"""The Ladder network: the combinator and the batch-normalised costs against hand-computed values,
and, with no noise, no batch norm and no denoising, the plain MLP term for term."""
import math

import pytest
import torch
import torch.nn.functional as F

from finetune.classifier import Classifier
from finetune.batch_norm import batch_normalize
from finetune.ladder import Ladder, combinator, denoising_cost, paper_lambdas
from finetune.served import ProbabilityClassifier
from finetune.unroll import UnrolledEncoder
from pretrain.autoencoder import AutoEncoder
from pretrain.stack import Stack


def sigm(t):
    return 1.0 / (1.0 + math.exp(-t))


def test_vanilla_combinator_by_hand():
    a = torch.tensor([2.0, 1.0, 0.0, 1.0, 0.5, 1.0, 1.0, 0.0, 2.0, 0.0])[:, None]  # (10, 1)
    z_tilde, u = torch.tensor([[3.0], [3.0]]), torch.tensor([[0.0], [1.0]])
    z_hat = combinator(z_tilde, u, a)
    # u = 0: mu = 2 sigm(0) + 0.5 = 1.5, v = sigm(0) = 0.5: (3 - 1.5) 0.5 + 1.5 = 2.25
    assert float(z_hat[0, 0]) == pytest.approx(2.25)
    mu, v = 2 * sigm(1.0) + 1.0 + 0.5, sigm(1.0) + 2.0
    assert float(z_hat[1, 0]) == pytest.approx((3.0 - mu) * v + mu, rel=1e-6)
    start = torch.zeros(10, 3)
    start[1] = start[6] = 1.0  # the initial a: z^ = 0 whatever z~ and u
    assert torch.equal(combinator(torch.randn(4, 3), torch.randn(4, 3), start), torch.zeros(4, 3))
    identity = torch.zeros(10, 3)
    identity[9] = 1.0  # a10 = 1: mu = 0, v = 1, z^ = z~
    z = torch.randn(4, 3)
    assert torch.equal(combinator(z, torch.randn(4, 3), identity), z)


def test_batch_normalisation_and_denoising_cost_by_hand():
    z, mu, sigma = batch_normalize(torch.tensor([[1.0, 0.0], [3.0, 4.0]]), eps=0.0)
    assert torch.equal(mu, torch.tensor([2.0, 2.0])) and torch.equal(sigma, torch.tensor([1.0, 2.0]))
    assert torch.equal(z, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))  # biased variance: 1 and 4
    z_clean, z_hat = torch.tensor([[-1.0], [1.0]]), torch.tensor([[2.0], [4.0]])
    # sigma 1: z^_BN = (0, 2), z - z^_BN = (-1, -1): mean square 1
    assert float(denoising_cost(z_clean, z_hat, torch.tensor([2.0]), torch.tensor([1.0]))) == 1.0
    # sigma 2: z^_BN = (0, 1), z - z^_BN = (-1, 0): mean square 1/2
    assert float(denoising_cost(z_clean, z_hat, torch.tensor([2.0]), torch.tensor([2.0]))) == 0.5


def encoder(seed=1):
    return UnrolledEncoder(Stack([AutoEncoder(6, 4, seed=seed), AutoEncoder(4, 3, seed=seed + 1)]))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    return x, y, torch.rand(5, 6, generator=g)


def test_without_noise_batch_norm_and_denoising_it_is_the_mlp_term_for_term(batch):
    x, y, x_u = batch
    base = Classifier(encoder(), 3, seed=2)
    ladder = Ladder(encoder(), 3, noise=0.0, denoise=[0.0] * 4, batch_norm=False, seed=2)
    assert torch.equal(ladder.net.head.weight, base.net.head.weight)
    assert torch.equal(ladder(x), base(x))
    t_base = base.loss_terms((x, y), stage="train")
    t_ladder = ladder.loss_terms({"labeled": (x, y), "unlabeled": (x_u,)}, stage="train")
    assert t_ladder.keys() == t_base.keys()
    for k in t_base:
        assert torch.allclose(t_ladder[k], t_base[k], rtol=1e-6, atol=0), k
    shared = dict(base.named_parameters())
    g_base = torch.autograd.grad(t_base["loss"], list(shared.values()))
    lad = dict(ladder.named_parameters())
    g_ladder = torch.autograd.grad(t_ladder["loss"], [lad[k] for k in shared])
    for name, a, b in zip(shared, g_base, g_ladder):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8), name


def test_costs_of_a_tiny_ladder_by_hand(batch):
    """Noise 0, batch norm on: layer 0's combinator as the identity makes C_d(0) exactly 0
    (z^(0) = z~(0) = x); the top's as the identity gives z^(L) = z(L), so Eq. (7) leaves
    C_d(L) = mean (z - (z - mu) / sigma)^2, each row with its own batch's clean statistics
    (the 8 labeled rows normalised on their own, the 5 unlabeled on theirs)."""
    x, y, x_u = batch
    ladder = Ladder(encoder(), 3, noise=0.0, denoise=[2.0, 0.0, 0.0, 3.0], seed=2)
    with torch.no_grad():
        for l in (0, 3):
            ladder.a[l].zero_()
            ladder.a[l][9] = 1.0
    terms = ladder.loss_terms({"labeled": (x, y), "unlabeled": (x_u,)}, stage="train")
    assert set(terms) == {"ce", "denoise_0", "denoise_3", "loss", "error"}
    assert float(terms["denoise_0"].detach()) == 0.0
    # the clean pass by hand: sigmoid layers on BN'd pre-activations (gamma 1, beta 0), then the head
    def by_hand(h):  # the clean pass of one batch, normalised on its own statistics
        for lin in ladder.encoder.layers:
            pre = lin(h)
            mu, var = pre.mean(0), pre.var(0, unbiased=False)
            h = torch.sigmoid((pre - mu) / torch.sqrt(var + 1e-5))
        pre = ladder.net.head(h)
        mu, sigma = pre.mean(0), torch.sqrt(pre.var(0, unbiased=False) + 1e-5)
        z = (pre - mu) / sigma
        return pre, z, ((z - (z - mu) / sigma) ** 2).sum()

    pre_l, z_l, sq_l = by_hand(x)  # (8, 3)
    pre_u, _, sq_u = by_hand(x_u)  # (5, 3)
    expected = 3.0 * (sq_l + sq_u) / (13 * 3)
    assert float(terms["denoise_3"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(terms["ce"].detach()) == pytest.approx(float(F.cross_entropy(z_l, y).detach()), rel=1e-6)
    assert torch.allclose(terms["loss"], terms["ce"] + terms["denoise_0"] + terms["denoise_3"])
    # the clean pass moved the running averages 10% of the way to the statistics of all 13 rows
    pre = torch.cat([pre_l, pre_u]).detach()
    assert torch.allclose(ladder.net.running_mean_3, 0.1 * pre.mean(0), atol=1e-6)
    assert torch.allclose(ladder.net.running_var_3, 0.9 + 0.1 * pre.var(0, unbiased=False), atol=1e-5)


def test_the_labeled_rows_output_does_not_depend_on_the_unlabeled_rows(batch):
    """Normalised together, the labeled rows' cost would depend on the unlabeled rows beside
    them, and the network could move those to suit the labeled rows; each batch on its own, the
    cross-entropy and its gradient are the same whatever unlabeled rows come with it."""
    x, y, x_u = batch
    ladder = Ladder(encoder(), 3, noise=0.0, denoise=[0.0, 0.0, 0.0, 0.0], seed=2)
    ce = [ladder.loss_terms({"labeled": (x, y), "unlabeled": (u,)}, stage="train")["ce"]
          for u in (x_u, 1.0 - x_u, torch.rand(11, 6, generator=torch.Generator().manual_seed(3)))]
    grads = [torch.autograd.grad(c, ladder.encoder.layers[0].weight) for c in ce]
    alone = ladder.loss_terms((x, y), stage="train")["ce"]
    for c, g in zip(ce, grads):
        assert float(c) == pytest.approx(float(alone), rel=1e-6)
        assert torch.allclose(g[0], grads[0][0], rtol=1e-5, atol=1e-7)
    assert grads[0][0].abs().sum() > 0


def test_noise_and_the_decoder_train_every_part(batch):
    x, y, x_u = batch
    torch.manual_seed(0)
    ladder = Ladder(encoder(), 3, noise=0.3, seed=2)
    assert ladder.lambdas == paper_lambdas(4) == [1000.0, 10.0, 0.1, 0.1]
    terms = ladder.loss_terms({"labeled": (x, y), "unlabeled": (x_u,)}, stage="train")
    assert {f"denoise_{l}" for l in range(4)} <= set(terms)
    def untrained():
        grads = torch.autograd.grad(terms["loss"], list(ladder.parameters()), allow_unused=True)
        return [n for (n, _), g in zip(ladder.named_parameters(), grads) if g is None or g.abs().sum() == 0]

    # at the authors' start (a2 = a7 = 1, the rest 0) z^ = 0 whatever u: V(l) gets no gradient yet
    assert untrained() == ["V.0", "V.1", "V.2"]
    with torch.no_grad():
        for a in ladder.a:
            a.add_(0.1 * torch.randn_like(a))
    terms = ladder.loss_terms({"labeled": (x, y), "unlabeled": (x_u,)}, stage="train")
    assert untrained() == []
    ladder.eval()  # the clean encoder with running averages: deterministic, noise-free
    assert torch.equal(ladder(x), ladder(x))
    val = ladder.loss_terms((x, y), stage="val")
    assert set(val) == {"ce", "loss", "error"}
    served = ProbabilityClassifier(ladder.net)  # what the pipeline logs: the clean encoder
    assert torch.allclose(served(x), torch.softmax(ladder(x), dim=1))


@pytest.mark.parametrize("kw, name", [({"noise": -0.1}, "noise"), ({"denoise": [1.0, 1.0]}, "denoise"),
                                      ({"denoise": [1.0, -1.0, 0.0, 0.0]}, r"denoise\[1\]"),
                                      ({"batch_norm": 1}, "batch_norm")])
def test_bad_settings_name_themselves(kw, name):
    with pytest.raises(ValueError, match=name):
        Ladder(encoder(), 3, **kw)


def test_matching_the_mlp_starts_the_ladder_from_the_stacks_function(batch):
    x, y, x_u = batch
    base = Classifier(encoder(), 3, seed=2)
    ladder = Ladder(encoder(), 3, seed=2)
    x_all = torch.cat([x, x_u])
    # in training, batch statistics with gamma 1, beta 0: unit-variance pre-activations, another function
    assert not torch.allclose(ladder(x_all), base(x_all), atol=1e-3)
    ladder.net.match_mlp(x_all)
    h_ladder = ladder.net.encode(x_all, 0.0)  # the top hidden layer's code, from its z and gamma, beta
    K = len(ladder.encoder.layers)
    top = torch.sigmoid(ladder.net.gamma[K - 1] * (h_ladder["z"][K] + ladder.net.beta[K - 1]))
    assert torch.allclose(top, base.encoder(x_all), atol=1e-5)  # the same rows' statistics
    pre = ladder.net.head(top)  # the softmax layer is batch-normalised as before
    z_top = (pre - pre.mean(0)) / torch.sqrt(pre.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(h_ladder["logits"], z_top, atol=1e-4)
    ladder.eval()
    h_eval = ladder.net.encode(x, 0.0)
    top = torch.sigmoid(ladder.net.gamma[K - 1] * (h_eval["z"][K] + ladder.net.beta[K - 1]))
    assert torch.allclose(top, base.encoder(x), atol=1e-5)  # eval: the running averages just set


def test_groups_that_do_not_cover_the_batch_are_refused(batch):
    x, y, x_u = batch
    ladder = Ladder(encoder(), 3, seed=2)
    with pytest.raises(ValueError, match=r"groups \[8, 4\] must sum to the batch's 13 rows"):
        ladder.encode(torch.cat([x, x_u]), 0.0, groups=[8, 4])
