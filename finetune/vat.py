"""Virtual adversarial training (VAT): fine-tuning that keeps the output flat where it is steepest.

For the classifier's output ``p(y | x) = softmax(logits(x))`` (B, n_classes), a labeled batch
``{(x_n, y_n)}`` of size B and an optional unlabeled batch ``{x_m}`` of size B_u:

    (1) D(r, x) = KL(p(. | x) || p(. | x + r))               p(. | x) held constant (no gradient)
    (2) D(r, x) ~= 1/2 r^T H(x) r,   H(x) = J^T (diag p - p p^T) J      J = d logits / dx (n_classes, d)
    (3) d <- g / ||g||,   g = grad_r D(r, x) at r = xi d       n_power times from d ~ N(0, I), ||d|| = 1
    (4) r_adv = epsilon d                                       per example, ||r_adv|| = epsilon
    (5) LDS(x) = D(r_adv, x)                                    r_adv held constant
    (6) VAT = alpha / (B + B_u) * sum over all B + B_u examples of LDS(x)
    (7) ENT = gamma / (B + B_u) * sum_x H(p(. | x)),   H(p) = -sum_y p_y log p_y
    (8) loss = CE + VAT + ENT                                   CE: ``finetune.classifier`` Eq. (1)

H(x) of (2) is the Fisher information of p(. | x) pulled back to the input: the first
derivative of D at r = 0 is 0, so ``grad_r D(xi d) ~= xi H d`` and (3) is a power iteration on
H by finite differences of the gradient, one backward pass per iteration, never H itself;
``d`` tends to H's leading eigenvector, the input direction along which the prediction is most
sensitive. (6) needs no labels, so the unlabeled pool is penalised too (the semi-supervised
setting); ``gamma > 0`` adds entropy minimisation (Grandvalet & Bengio 2005), "VAT+EntMin" of
the paper. A constant classifier has D = 0 for every r: (6) vanishes and (3) has g = 0, kept as
d = 0. With alpha = gamma = 0 the loss is the ``Classifier``'s, term for term.

With ``batch_norm`` the network is a ``BatchNormMLP`` (``finetune.batch_norm``: every layer's
pre-activation normalised over the batch, the authors' MNIST networks). Its output depends on
the batch, so the labeled and the unlabeled batch are normalised each on its own, as the
authors' code does: one batch mixing them lets the normalisation of the logits trade the labeled
rows' logits against the pool rows' (measured: 60-70% validation error on MNIST with 100 labels
after 4 epochs, against 30% for the labeled batch alone). The target p(. | x) of (1) for each
batch comes from its own pass, which moves the running averages (the labeled one also trains
CE); the perturbed passes of (3) and (5) are normalised by their own batch and do not move them,
so that at r = 0 a perturbed pass is its target's pass and D(0, x) = 0, as (2) needs.

Batches: ``(x, y)``, or a dict ``{"labeled": (x, y), "unlabeled": (x_u,)}`` (what
``PairedLoader`` yields); validation and test batches are ``(x, y)`` and get no penalty.
Logged, weighted as in the loss: ``stage/ce``, ``stage/vat``, ``stage/entropy``,
``stage/loss``, ``stage/error``.

References
----------
Miyato, Maeda, Koyama & Ishii, Virtual adversarial training: a regularization method for
supervised and semi-supervised learning, IEEE TPAMI 2018.
Grandvalet & Bengio, Semi-supervised learning by entropy minimization, NIPS 2005.
Ioffe & Szegedy, Batch normalization, ICML 2015.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pretrain.checks import check_bool, check_int, check_positive

from .batch_norm import BatchNormMLP
from .classifier import Classifier, split_batch
from .unroll import UnrolledDecoder, UnrolledEncoder


def kl_from_logits(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Eq. (1) per example, ``KL(softmax(logits_p) || softmax(logits_q))``: (B, C), (B, C) -> (B,)."""
    log_p = F.log_softmax(logits_p, dim=1)
    log_q = F.log_softmax(logits_q, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)  # Eq. (1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(p) of Eq. (7) per example: (B, C) -> (B,)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm (a zero row stays zero): (B, d) -> (B, d)."""
    v = v / v.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)  # scaled first: no underflow in the norm
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)


def adversarial_direction(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, xi: float,
                          n_power: int, d: torch.Tensor | None = None,
                          logits: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (3): the unit directions of steepest D, (B, d) -> (B, d), rows of norm 1 (or 0).

    ``f`` maps inputs to logits; ``d`` is the starting direction (default: N(0, I) from the
    global generator), ``logits`` are ``f(x)`` if already computed. Nothing here accumulates
    gradients in the parameters of ``f``.
    """
    check_positive("xi", xi)
    check_int("n_power", n_power, 1)
    with torch.no_grad():
        logits_p = (f(x) if logits is None else logits).detach()  # (B, C)
    d = _unit_rows(torch.randn_like(x) if d is None else d.to(x))
    for _ in range(n_power):
        r = (xi * d).requires_grad_(True)  # (B, d)
        kl = kl_from_logits(logits_p, f(x.detach() + r)).sum()  # per-example gradients: sum, not mean
        (g,) = torch.autograd.grad(kl, r)  # (B, d): ~= xi H(x) d, Eq. (2)
        d = _unit_rows(g.detach())  # Eq. (3)
    return d


def virtual_adversarial_loss(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                             epsilon: float, xi: float, n_power: int, d: torch.Tensor | None = None,
                             logits: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (5) per example: LDS(x), (B, d) -> (B,), differentiable in the parameters of ``f``.

    ``logits`` (``f(x)``, if already computed) are detached here: p(. | x) is the target.
    """
    check_positive("epsilon", epsilon)
    logits_p = (f(x) if logits is None else logits).detach()
    r_adv = epsilon * adversarial_direction(f, x, xi=xi, n_power=n_power, d=d, logits=logits_p)  # Eq. (4)
    return kl_from_logits(logits_p, f(x + r_adv))  # Eq. (5), r_adv constant


class VAT(Classifier):
    """A ``Classifier`` trained on Eq. (8): cross-entropy plus the virtual adversarial penalty.

    Parameters
    ----------
    encoder, n_classes : as for ``Classifier``.
    alpha : weight of the VAT penalty, Eq. (6) (>= 0).
    epsilon : norm of the virtual adversarial perturbation, Eq. (4) (> 0), in input units.
    xi : the finite-difference step of the power iteration, Eq. (3) (> 0).
    n_power : power iterations per batch (>= 1); the paper finds one enough.
    entropy : gamma, weight of the entropy term, Eq. (7) (>= 0); 0: plain VAT.
    batch_norm : the network is a ``BatchNormMLP`` (the encoder's layers and the head,
        batch-normalised); False: the ``Classifier``'s ``MLP``. Not with ``reconstruction``.
    lr, optimizer, momentum, weight_decay, lr_decay, lr_anneal_start, reconstruction, decoder,
    seed : as for ``Classifier``.
    """

    def __init__(self, encoder: UnrolledEncoder, n_classes: int, *, alpha: float = 1.0,
                 epsilon: float = 2.0, xi: float = 1e-6, n_power: int = 1, entropy: float = 0.0,
                 batch_norm: bool = False, lr: float = 0.01, optimizer: str = "adam",
                 momentum: float = 0.0, weight_decay: float = 0.0, lr_decay: float = 1.0,
                 lr_anneal_start: float | None = None, reconstruction: float = 0.0,
                 decoder: UnrolledDecoder | None = None, seed: int = 0):
        check_positive("alpha", alpha, allow_zero=True)
        check_positive("epsilon", epsilon)
        check_positive("xi", xi)
        check_int("n_power", n_power, 1)
        check_positive("entropy", entropy, allow_zero=True)
        if check_bool("batch_norm", batch_norm) and reconstruction > 0:
            raise ValueError(f"batch_norm=True with reconstruction={reconstruction!r}: the "
                             f"batch-normalised network has no code to decode; set one of them off")
        super().__init__(encoder, n_classes, lr=lr, optimizer=optimizer, momentum=momentum,
                         weight_decay=weight_decay, lr_decay=lr_decay, lr_anneal_start=lr_anneal_start,
                         reconstruction=reconstruction,
                         decoder=decoder, seed=seed)
        if batch_norm:
            self.net = BatchNormMLP(encoder, n_classes, seed=seed)  # the same head
        self.save_hyperparameters(ignore=["encoder", "decoder"])

    def penalty(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. (5) per example: (B, n_visible) -> (B,); ``logits``: ``self(x)`` if computed."""
        hp = self.hparams
        return virtual_adversarial_loss(self, x, epsilon=hp.epsilon, xi=hp.xi, n_power=hp.n_power,
                                        logits=logits)

    def loss_terms(self, batch, *, stage: str) -> dict[str, torch.Tensor]:
        """Named terms of a VAT batch (see the module docstring); ``loss`` is Eq. (8)."""
        labeled, unlabeled = split_batch(batch)
        x, y = labeled[0], labeled[1]
        hp = self.hparams
        if stage != "train" or (hp.alpha == 0 and hp.entropy == 0):
            logits = None
            if hp.batch_norm:  # training: batch statistics, tracked; else the running averages
                logits = self.net.encode(x, track=stage == "train")["logits"]  # (B, n_classes)
            terms = self.supervised_terms(x, y, logits=logits)
            terms["loss"] = sum(v for k, v in terms.items() if k != "error")
            return terms
        self._check_labeled(x, y)
        xs = [x]
        if unlabeled is not None:
            self._check_unlabeled(unlabeled[0])
            xs.append(unlabeled[0])
        x_all = torch.cat(xs)  # (B + B_u, n_visible)
        B = len(x)
        if hp.batch_norm:  # each batch normalised on its own (see the module docstring)
            parts = [self.net.encode(x, track=True)["logits"]]  # (B, n_classes), trains CE
            with torch.set_grad_enabled(hp.entropy > 0 and torch.is_grad_enabled()):
                parts += [self.net.encode(x_u, track=True)["logits"] for x_u in xs[1:]]  # (B_u, n_classes)
            terms = self.supervised_terms(x, y, logits=parts[0])
            logits = torch.cat(parts)  # (B + B_u, n_classes)
        elif hp.entropy > 0:  # Eq. (7) differentiates every row's logits: CE shares their one pass
            h_all = self.encoder(x_all)  # (B + B_u, n_hidden)
            logits = self.net.head(h_all)  # (B + B_u, n_classes)
            terms = self.supervised_terms(x, y, h=h_all[:B], logits=logits[:B])
        else:  # the logits are the penalty's target alone: CE's for the labeled rows, no graph
            h = self.encoder(x)  # (B, n_hidden)
            logits_lab = self.net.head(h)  # (B, n_classes)
            terms = self.supervised_terms(x, y, h=h, logits=logits_lab)
            with torch.no_grad():
                logits = torch.cat([logits_lab.detach(), *(self(x_u) for x_u in xs[1:])])  # (B + B_u, n_classes)
        if hp.alpha > 0:  # under batch norm each batch beside its own target, else all rows at once
            groups = list(zip(xs, parts)) if hp.batch_norm else [(x_all, logits)]
            lds = torch.cat([self.penalty(x_g, logits_g) for x_g, logits_g in groups])  # (B + B_u,)
            terms["vat"] = hp.alpha * lds.mean()  # Eq. (6)
        if hp.entropy > 0:
            terms["entropy"] = hp.entropy * entropy_from_logits(logits).mean()  # Eq. (7)
        terms["loss"] = sum(v for k, v in terms.items() if k != "error")  # Eq. (8)
        return terms
