"""The manifold tangent classifier: its loss against an explicit Jacobian, and short fits."""
import lightning.pytorch as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from finetune.classifier import Classifier
from finetune.mtc import MTC, tangent_distance, tangent_distance_knn
from finetune.tangents import tangents
from finetune.unroll import UnrolledEncoder, unroll_autoencoder
from pretrain.autoencoder import AutoEncoder
from pretrain.stack import GreedyStack, Stack


def trainer(epochs):
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     deterministic=True, num_sanity_val_steps=0)


@pytest.fixture(scope="module")
def digits():
    """Pixels in [0, 1]: 200 labeled, 400 test, the remaining 1197 unlabeled."""
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(X))
    X = torch.tensor(X[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[order], dtype=torch.int64)
    return dict(x_l=X[:200], y_l=y[:200], x_test=X[200:600], y_test=y[200:600], x_u=X[600:])


@pytest.fixture(scope="module")
def stack(digits):
    """A 64-32 contractive autoencoder pretrained briefly on the unlabeled pool."""
    def fit_layer(k, layer, codes, val_codes):
        trainer(10).fit(layer, DataLoader(TensorDataset(codes), batch_size=32, shuffle=True))

    L.seed_everything(0, verbose=False)
    return GreedyStack([AutoEncoder(64, 32, contraction=0.1, lr=0.1, momentum=0.9, seed=0)]).fit(
        digits["x_u"], fit_layer)


def small_stack():
    """Two layers, mixed units, float64: 12-7 sigmoid, 7-5 tanh."""
    return Stack([AutoEncoder(12, 7, seed=0),
                  AutoEncoder(7, 5, hidden_unit="tanh", visible_unit="linear", loss="mse", seed=1)]).double()


def orthonormal(B, k, d, seed):
    A = torch.randn(B, d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.linalg.qr(A)[0].transpose(1, 2)  # (B, k, d), orthonormal rows


def explicit_omega(model, x, U):
    """Eq. (1) from the full Jacobian do/dx (n_classes, d) of each example, no forward mode."""
    out = []
    for xi, Ui in zip(x, U):
        J = torch.autograd.functional.jacobian(lambda v: model.output(v[None])[0], xi)  # (C, d)
        out.append(((J @ Ui.T) ** 2).sum())
    return torch.stack(out)


def test_loss_is_cross_entropy_plus_beta_times_the_explicit_jacobian_penalty():
    stack = small_stack()
    model = MTC(UnrolledEncoder(stack), 4, beta=0.3, seed=0)
    with torch.no_grad():  # a head large enough that the output is far from flat
        model.net.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 12, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    U = orthonormal(6, 3, 12, seed=3)
    terms = model.loss_terms((x, y, U), stage="train")
    ce = F.cross_entropy(model(x), y)
    omega = explicit_omega(model, x, U)
    assert omega.min() > 1e-6  # not a vacuous comparison
    assert terms["tangent"].item() == pytest.approx(0.3 * omega.mean().item(), rel=1e-10)
    assert terms["loss"].item() == pytest.approx((ce + 0.3 * omega.mean()).item(), rel=1e-10)
    # the penalty is on the probabilities, not the logits
    logit_omega = torch.stack([((torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi)
                                 @ Ui.T) ** 2).sum() for xi, Ui in zip(x, U)])
    assert not torch.allclose(logit_omega, omega, rtol=1e-2)
    # and it trains the parameters: its gradient reaches the first layer
    model.zero_grad()
    terms["tangent"].backward()
    assert model.encoder.layers[0].weight.grad.abs().sum() > 0


def test_beta_zero_is_the_classifier_loss_exactly():
    stack = small_stack()
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    U = orthonormal(6, 3, 12, seed=3)
    e1, d1 = unroll_autoencoder(stack)
    e2, d2 = unroll_autoencoder(stack)
    mtc = MTC(e1, 4, beta=0.0, reconstruction=0.2, decoder=d1, seed=5)
    clf = Classifier(e2, 4, reconstruction=0.2, decoder=d2, seed=5)
    t_mtc = mtc.loss_terms((x, y, U), stage="train")
    t_clf = clf.loss_terms((x, y), stage="train")
    assert set(t_mtc) == set(t_clf) == {"ce", "rec", "error", "loss"}
    for name in t_clf:
        assert torch.equal(t_mtc[name], t_clf[name]), name


def test_dict_batch_penalises_the_unlabeled_examples_too():
    stack = small_stack()
    model = MTC(UnrolledEncoder(stack), 4, beta=0.5, seed=0)
    with torch.no_grad():
        model.net.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    x, x_u = torch.rand(4, 12, generator=g, dtype=torch.float64), torch.rand(7, 12, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    U, U_u, U_u2 = orthonormal(4, 2, 12, 3), orthonormal(7, 2, 12, 4), orthonormal(7, 2, 12, 5)
    t1 = model.loss_terms({"labeled": (x, y, U), "unlabeled": (x_u, U_u)}, stage="train")
    t2 = model.loss_terms({"labeled": (x, y, U), "unlabeled": (x_u, U_u2)}, stage="train")
    assert torch.equal(t1["ce"], t2["ce"])
    assert abs(t1["tangent"].item() - t2["tangent"].item()) > 1e-6  # only the unlabeled U changed
    omega = torch.cat([explicit_omega(model, x, U), explicit_omega(model, x_u, U_u)])
    assert t1["tangent"].item() == pytest.approx(0.5 * omega.mean().item(), rel=1e-10)  # Eq. (2)
    # labeled examples without tangents: the penalty runs on the unlabeled ones alone
    t3 = model.loss_terms({"labeled": (x, y), "unlabeled": (x_u, U_u)}, stage="train")
    assert t3["tangent"].item() == pytest.approx(0.5 * explicit_omega(model, x_u, U_u).mean().item(), rel=1e-10)


def test_bad_batches_and_hyperparameters_raise():
    stack = small_stack()
    model = MTC(UnrolledEncoder(stack), 4, beta=0.5)
    x = torch.rand(4, 12, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="training batches need tangents"):
        model.loss_terms((x, y), stage="train")
    assert "tangent" not in model.loss_terms((x, y), stage="val")  # evaluation needs none
    with pytest.raises(ValueError, match=r"tangents must have shape \(4, k, 12\)"):
        model.loss_terms((x, y, orthonormal(4, 2, 11, 0)), stage="train")
    with pytest.raises(ValueError, match=r"unlabeled tangents must have shape \(3, k, 12\)"):
        model.loss_terms({"labeled": (x, y), "unlabeled": (x[:3], orthonormal(4, 2, 12, 0))}, stage="train")
    with pytest.raises(ValueError, match="'labeled'"):
        model.loss_terms({"pool": (x, orthonormal(4, 2, 12, 0))}, stage="train")
    with pytest.raises(ValueError, match="label 7 is out of range for n_classes=4"):
        model.loss_terms((x, torch.tensor([0, 7, 1, 1]), orthonormal(4, 2, 12, 0)), stage="train")
    with pytest.raises(ValueError, match="beta must be >= 0, got -0.1"):
        MTC(UnrolledEncoder(stack), 4, beta=-0.1)
    assert MTC(UnrolledEncoder(stack), 4, beta=0.25, lr=0.5).hparams["beta"] == 0.25


def mean_omega(model, x, U):
    return torch.cat([model.penalty(x[i:i + 100], U[i:i + 100]).detach() for i in range(0, len(x), 100)]).mean().item()


def test_short_fits_lower_the_tangent_penalty_on_labeled_and_on_unlabeled_data(digits, stack):
    k = 5
    U_l, _ = tangents(stack, digits["x_l"], k)
    U_u, _ = tangents(stack, digits["x_u"], k)
    U_test, _ = tangents(stack, digits["x_test"], k)
    val = DataLoader(TensorDataset(digits["x_test"], digits["y_test"]), batch_size=200)
    result = {}
    for name, beta in (("clf", 0.0), ("mtc", 3.0), ("mtc_all", 3.0)):
        L.seed_everything(0, verbose=False)
        model = MTC(UnrolledEncoder(stack), 10, beta=beta, lr=0.01, seed=0)
        labeled = DataLoader(TensorDataset(digits["x_l"], digits["y_l"], U_l), batch_size=20, shuffle=True)
        if name == "mtc_all":  # Lightning combines a dict of loaders into dict batches
            train = {"labeled": labeled,
                     "unlabeled": DataLoader(TensorDataset(digits["x_u"], U_u), batch_size=40, shuffle=True)}
        else:
            train = labeled
        t = trainer(10)
        t.fit(model, train, val)
        with torch.no_grad():
            error = (model.predict(digits["x_test"]) != digits["y_test"]).float().mean().item()
        result[name] = dict(test=mean_omega(model, digits["x_test"], U_test),
                            pool=mean_omega(model, digits["x_u"], U_u), error=error,
                            val_error=t.callback_metrics["val/error"].item(),
                            logged=t.callback_metrics.get("train/tangent"))
    assert result["clf"]["logged"] is None and result["mtc"]["logged"] > 0
    assert result["mtc"]["val_error"] == pytest.approx(result["mtc"]["error"], abs=1e-6)
    for name in ("mtc", "mtc_all"):  # measured 0.348 -> 0.128 (mtc), 0.112 (mtc_all)
        assert result[name]["test"] < 0.5 * result["clf"]["test"], result
        assert result[name]["error"] < 0.25, result  # still a classifier, not a constant
    # penalising the pool flattens the output there more than penalising 200 labeled examples
    assert result["mtc_all"]["pool"] < result["mtc"]["pool"], result


def test_tangent_distance_is_the_distance_to_the_tangent_plane():
    g = torch.Generator().manual_seed(0)
    X_ref = torch.randn(5, 9, generator=g, dtype=torch.float64)
    X_query = torch.randn(4, 9, generator=g, dtype=torch.float64)
    U = orthonormal(5, 3, 9, seed=1)
    d2 = tangent_distance(X_query, X_ref, U)
    for q in range(4):
        for n in range(5):  # min_a ||q - (x + U^T a)||^2 by least squares
            a = torch.linalg.lstsq(U[n].T, (X_query[q] - X_ref[n])[:, None]).solution
            brute = ((X_query[q] - X_ref[n] - (U[n].T @ a)[:, 0]) ** 2).sum()
            assert d2[q, n].item() == pytest.approx(brute.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(tangent_distance(X_query, X_ref, U[:, :0]), torch.cdist(X_query, X_ref) ** 2)


def test_tangent_distance_knn_votes_and_matches_euclidean_knn_without_tangents(digits):
    from sklearn.neighbors import KNeighborsClassifier
    X, y = digits["x_l"].double(), digits["y_l"]
    Q = digits["x_test"].double()
    ours = tangent_distance_knn(X, y, torch.zeros(len(X), 0, 64, dtype=torch.float64), Q, batch_size=64)
    sk = KNeighborsClassifier(n_neighbors=1).fit(X.numpy(), y.numpy()).predict(Q.numpy())
    assert np.array_equal(ours.numpy(), sk)
    # 1-D references at 0, 1, 2, 3 with labels 0, 1, 1, 0: votes, and a tie broken by the nearest
    X1 = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    y1 = torch.tensor([0, 1, 1, 0])
    none = torch.zeros(4, 0, 1)
    assert tangent_distance_knn(X1, y1, none, torch.tensor([[0.2]]), n_neighbors=3).item() == 1
    assert tangent_distance_knn(X1, y1, none, torch.tensor([[0.2]]), n_neighbors=4).item() == 0
    assert tangent_distance_knn(X1, y1, none, torch.tensor([[2.9]]), n_neighbors=4).item() == 0
    assert tangent_distance_knn(X1, y1, none, torch.tensor([[1.9]]), n_neighbors=4).item() == 1
    with pytest.raises(ValueError, match="n_neighbors must be an integer in \\[1, 4\\], got 5"):
        tangent_distance_knn(X1, y1, none, X1, n_neighbors=5)
