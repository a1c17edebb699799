"""PCA and ZCA whitening as a layer: fitted on the training rows, stacked below any other kind.

For the N training rows x_n in R^d:

    (1) mu = 1/N sum_n x_n
    (2) Sigma = 1/N sum_n (x_n - mu)(x_n - mu)^T = 1/N sum_n x_n x_n^T - mu mu^T = U diag(s) U^T,
        s_1 >= s_2 >= ... >= s_d, U orthogonal
    (3) PCA:  W = diag(1 / sqrt(s_i + eps))_{i <= n} U_n^T       (n, d), U_n the first n columns of U
    (4) ZCA:  W = U diag(1 / sqrt(s + eps)) U^T                  (d, d), symmetric
    (5) h = encode(x) = W (x - mu) = W x + b,   b = -W mu        linear hidden units
    (6) r = decode(h) = W^+ h + mu,   PCA: W^+ = U_n diag(sqrt(s_i + eps)),
                                      ZCA: W^+ = U diag(sqrt(s + eps)) U^T
    (7) Cov(h) = W Sigma W^T = diag(s_i / (s_i + eps)) (PCA), U diag(s / (s + eps)) U^T (ZCA)

so with eps = 0 the codes have identity covariance, and eps > 0 damps the directions of
variance below eps instead of blowing their noise up. W W^+ = I: ``decode(encode(x))`` is
``U_n U_n^T (x - mu) + mu``, x itself when n = d, its projection on the first n principal
components otherwise; its squared error (the reconstruction error of ``pretrain.autoencoder``,
Eq. 5)

    (8) 1/2 ||r - x||^2,  whose mean over the training rows is 1/2 sum_{i > n} s_i

is the variance PCA leaves out. Among all whitening matrices (W Sigma W^T = I), ZCA is the
one whose codes stay closest to the centred inputs, ``E ||W (x - mu) - (x - mu)||^2`` minimal
(Kessy, Lewin & Strimmer 2018): its filters are local, centre-surround on images. A layer k
trained on the codes reads, in input space,

    (9) encoder filters W_k W (n_k, d),   decoder filters W^+ W_k' (d, n_k)

and for a tied layer (W_k' = W_k^T) on ZCA codes the decoder filters are the encoder filters
smoothed by the regularised covariance: W^+ W_k^T = (Sigma + eps I) (W_k W)^T.

Fitting keeps the layer contract and goes through a Trainer like every layer, without an
optimizer: the epoch's batches add up the sufficient statistics N, sum x and sum x x^T in
float64 (summed across ranks under DDP, whose padded shards repeat at most world_size - 1
rows), and Eqs. (1)-(4), (6) are computed after the first epoch's last batch; the fit then
stops, and a run resumed or asked for more epochs leaves W as it is, so any number of epochs
gives the W of one. float64 sums keep Eq. (2)'s difference accurate unless the inputs' mean
is some 10^6 standard deviations away from zero.

References
----------
Bell & Sejnowski, The "independent components" of natural scenes are edge filters, Vision
Research 1997 (ZCA).
Kessy, Lewin & Strimmer, Optimal whitening and decorrelation, The American Statistician 2018.
Krizhevsky, Learning multiple layers of features from tiny images, 2009 (ZCA before an RBM).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.checks import check_choice, check_float, check_int
from pretrain.layer import Layer
from pretrain.module import batch_input
from pretrain.names import WHITENINGS


def whitening_matrices(n: int, sum_x: torch.Tensor, sum_xx: torch.Tensor, *, whitening: str,
                       epsilon: float, n_components: int) -> dict[str, torch.Tensor]:
    """Eqs. (1)-(4) and (6) from the sufficient statistics of N rows, in their dtype (float64).

    Parameters
    ----------
    n : N, the number of rows summed.
    sum_x : (d,) sum of the rows; sum_xx : (d, d) sum of their outer products x x^T.
    whitening : ``"pca"`` or ``"zca"``; epsilon : eps >= 0; n_components : n (d for ZCA).

    Returns
    -------
    ``{"W": (n, d), "W_plus": (d, n), "mu": (d,), "variances": s (d,), descending}``; each
    principal direction's sign is fixed (its largest entry positive), as scikit-learn's PCA does.

    Raises
    ------
    ValueError
        for non-finite statistics, or eps = 0 with a kept direction of zero variance.
    """
    if not (torch.isfinite(sum_x).all() and torch.isfinite(sum_xx).all()):
        raise ValueError("the whitening's training rows hold NaN or inf: clean the data before "
                         "fitting")
    d, k = sum_x.shape[0], n_components
    mu = sum_x / n  # Eq. (1)
    sigma = sum_xx / n - torch.outer(mu, mu)  # Eq. (2)
    s, U = torch.linalg.eigh(0.5 * (sigma + sigma.T))  # ascending; exactly symmetric input
    s, U = s.flip(0).clamp_min(0.0), U.flip(1)  # descending; rounding leaves -1e-17, not -variance
    U = U * torch.sign(U[U.abs().argmax(dim=0), torch.arange(d)])  # deterministic signs
    if epsilon == 0:
        tol = s[0] * d * torch.finfo(s.dtype).eps  # numerically zero, as numpy's matrix_rank
        flat = int((s[:k] <= tol).sum())
        if flat:
            fix = "set epsilon > 0 (e.g. 0.1)" + (f" or n_hidden <= {k - flat}" if whitening == "pca" else "")
            raise ValueError(f"{flat} of the {k} directions the whitening keeps have zero variance in "
                             f"the training rows (constant or collinear inputs), so 1 / sqrt(s) is "
                             f"infinite: {fix}")
    root = (s[:k] + epsilon).sqrt()  # sqrt(s_i + eps), i <= n
    if whitening == "pca":
        W = U[:, :k].T / root[:, None]  # Eq. (3): (n, d)
        W_plus = U[:, :k] * root  # Eq. (6): (d, n)
    else:
        W = (U / root) @ U.T  # Eq. (4): (d, d)
        W_plus = (U * root) @ U.T  # Eq. (6)
    return {"W": W, "W_plus": W_plus, "mu": mu, "variances": s}


class Whitening(Layer):
    """PCA or ZCA whitening, Eqs. (1)-(6), fitted in one pass over the training rows.

    Parameters
    ----------
    n_visible : input size d (>= 1).
    n_hidden : kept components n: at most d for PCA, exactly d for ZCA.
    whitening : ``"zca"`` (Eq. 4) or ``"pca"`` (Eq. 3).
    epsilon : eps >= 0 of Eqs. (3)-(4), in the inputs' squared units; 0 is exact whitening and
        needs every kept direction to vary.
    seed : taken like every kind's; the whitening draws no random numbers.

    Before fitting, W is the first n rows of the identity and mu = 0 (a coordinate projection).
    The layer above must reconstruct real-valued codes: ``visible_unit="linear"``, ``loss="mse"``.
    """

    hidden_unit = "linear"
    visible_unit = "linear"

    def __init__(self, n_visible: int, n_hidden: int, *, whitening: str = "zca", epsilon: float = 0.0,
                 seed: int = 0):
        # no optimizer: W is computed in closed form (the values below are never used)
        super().__init__(lr=1.0, optimizer="sgd", momentum=0.0, weight_decay=0.0)
        n_visible, n_hidden = check_int("n_visible", n_visible, 1), check_int("n_hidden", n_hidden, 1)
        check_choice("whitening", whitening, WHITENINGS)
        epsilon = check_float("epsilon", epsilon, low=0.0)
        if n_hidden > n_visible:
            raise ValueError(f"whitening keeps at most n_visible={n_visible} components, got "
                             f"n_hidden={n_hidden}; set n_hidden <= {n_visible}")
        if whitening == "zca" and n_hidden != n_visible:
            raise ValueError(f"ZCA whitening rotates back to input space and keeps every direction: "
                             f"n_hidden must equal n_visible={n_visible}, got n_hidden={n_hidden}; set "
                             f"n_hidden={n_visible}, or whitening='pca' to keep the first {n_hidden} "
                             f"components")
        seed = check_int("seed", seed)
        self.save_hyperparameters()
        self.automatic_optimization = False
        identity = torch.eye(n_hidden, n_visible)
        # W a Parameter, as every layer's encoder weight, though set in closed form: Lightning's
        # DDP wraps the layer, and torch's DDP refuses a module without a trainable parameter
        self.W = nn.Parameter(identity)  # (n_hidden, n_visible): Eq. (3) or (4)
        self.register_buffer("W_plus", identity.T.clone())  # (n_visible, n_hidden): Eq. (6)
        self.register_buffer("mu", torch.zeros(n_visible))  # Eq. (1)
        self.register_buffer("variances", torch.zeros(n_visible))  # s of Eq. (2), descending
        self.register_buffer("n_fitted", torch.zeros((), dtype=torch.long))  # N; 0 until fitted
        #: [N, sum x, sum x x^T] of the epoch being read, float64; None outside it
        self._sums: list | None = None
        self._reading = False

    # -- the contract -----------------------------------------------------------------------
    @property
    def encoder_weight(self) -> torch.Tensor:
        return self.W

    @property
    def encoder_bias(self) -> torch.Tensor:  # b = -W mu of Eq. (5)
        return -(self.W @ self.mu)

    @property
    def decoder_weight(self) -> torch.Tensor:  # W^+: (n_visible, n_hidden)
        return self.W_plus

    @property
    def decoder_bias(self) -> torch.Tensor:
        return self.mu

    @property
    def tied(self) -> bool:
        return False  # the decoder is W^+, not W^T

    @property
    def fitted(self) -> bool:
        return bool(self.n_fitted > 0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (5): (B, n_visible) -> (B, n_hidden)."""
        return F.linear(x - self.mu, self.W)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. (6): (B, n_hidden) -> (B, n_visible)."""
        return F.linear(h, self.W_plus, self.mu)

    def input_filters(self, layer: Layer) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (9): the encoder filters (n_k, d) and decoder filters (d, n_k) of ``layer``, trained
        on this whitening's codes, in input space."""
        return layer.encoder_weight @ self.W, self.W_plus @ layer.decoder_weight

    def filter_order(self) -> torch.Tensor:
        """The rows of W in the order a figure draws them: PCA's components as they come (by
        variance); ZCA's rows, one per input, by their input's variance, read from
        diag(W^+ W^+T) = diag(Sigma) + eps, so that an image's varying centre comes before its
        constant border (whose rows are all alike, e_i / sqrt(eps))."""
        if self.hparams.whitening == "pca":
            return torch.arange(self.n_hidden)
        return torch.argsort((self.W_plus**2).sum(dim=1), descending=True)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.n_visible:
            raise ValueError(f"{self.layer_name} expects inputs of shape (B, {self.n_visible}), "
                             f"got {tuple(x.shape)}")

    def loss_terms(self, x: torch.Tensor, *, train: bool) -> dict[str, torch.Tensor]:
        """Eq. (8), averaged over the batch: 0 for full rank, the left-out variance for PCA."""
        self._check_input(x)
        r = self.decode(self.encode(x))  # (B, n_visible)
        rec = 0.5 * ((r - x) ** 2).sum(dim=1).mean()  # Eq. (8)
        return {"rec": rec, "loss": rec}

    # -- fitting: one pass of sufficient statistics ------------------------------------------
    def configure_optimizers(self):
        return []  # no optimizer: Eqs. (1)-(4) in closed form (an empty list, where None warns)

    def on_train_epoch_start(self) -> None:
        self._reading = not self.fitted  # one host read an epoch, not one a batch
        self._sums = None

    def training_step(self, batch, batch_idx):
        if not self._reading:  # fitted in an earlier epoch or a resumed run: nothing to read
            return None
        x = batch_input(batch)
        self._check_input(x)
        # float64 sums (on the CPU for MPS, which has no float64)
        x64 = x.detach().to("cpu" if x.device.type == "mps" else x.device, torch.float64)
        if self._sums is None:
            d = self.n_visible
            self._sums = [0, x64.new_zeros(d), x64.new_zeros(d, d)]
        self._sums[0] += x64.shape[0]
        self._sums[1] += x64.sum(dim=0)  # sum x
        self._sums[2].addmm_(x64.T, x64)  # sum x x^T: (d, d)
        if batch_idx + 1 == self.trainer.num_training_batches:
            self._fit_statistics()
        return None

    def _fit_statistics(self) -> None:
        n, sum_x, sum_xx = self._sums
        self._sums = None
        count = sum_x.new_tensor([float(n)])
        stats = torch.cat([count, sum_x, sum_xx.flatten()])
        stats = self.trainer.strategy.reduce(stats, reduce_op="sum")  # all ranks' rows (DDP)
        d = self.n_visible
        n = round(stats[0].item())
        fit = whitening_matrices(n, stats[1:d + 1], stats[d + 1:].view(d, d),
                                 whitening=self.hparams.whitening, epsilon=self.hparams.epsilon,
                                 n_components=self.n_hidden)
        with torch.no_grad():  # W is a leaf Parameter
            for name, value in fit.items():
                target = getattr(self, name)
                target.copy_(value.to(target.device, target.dtype))
            self.n_fitted.fill_(n)
        self._reading = False

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.fitted:  # further epochs would change nothing
            self.trainer.should_stop = True
