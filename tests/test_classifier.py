"""Classifier fine-tuning on scikit-learn's digits with real Lightning Trainers."""
import copy

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from finetune.classifier import Classifier
from finetune.unroll import UnrolledEncoder, unroll_autoencoder
from pretrain.autoencoder import AutoEncoder
from pretrain.stack import GreedyStack, Stack


def trainer(epochs):
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     deterministic=True)


@pytest.fixture(scope="module")
def digits():
    """Pixels in [0, 1]: 300 labeled, 500 test, the remaining 997 unlabeled."""
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(X))
    X = torch.tensor(X[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[order], dtype=torch.int64)
    return dict(x_l=X[:300], y_l=y[:300], x_test=X[300:800], y_test=y[300:800], x_u=X[800:])


@pytest.fixture(scope="module")
def stack(digits):
    """A 64-32 sigmoid autoencoder pretrained briefly on the unlabeled pool."""
    def fit_layer(k, layer, codes, val_codes):
        trainer(15).fit(layer, DataLoader(TensorDataset(codes), batch_size=32, shuffle=True))

    L.seed_everything(0, verbose=False)
    layer = AutoEncoder(64, 32, lr=0.1, optimizer="sgd", momentum=0.9, seed=0)
    return GreedyStack([layer]).fit(digits["x_u"], fit_layer)


def labeled_loader(d, batch_size=32):
    return DataLoader(TensorDataset(d["x_l"], d["y_l"]), batch_size=batch_size, shuffle=True)


def test_fine_tuning_on_300_labels_classifies_digits(digits, stack):
    L.seed_everything(0, verbose=False)
    W_stack = stack[0].W.detach().clone()
    model = Classifier(UnrolledEncoder(stack), 10, lr=0.01, seed=0)
    error_before = (model.predict(digits["x_test"]) != digits["y_test"]).float().mean().item()
    trainer(30).fit(model, labeled_loader(digits))
    error = (model.predict(digits["x_test"]) != digits["y_test"]).float().mean().item()
    assert error_before > 0.5  # the untrained head is near chance
    assert error < 0.15, error  # a model that learned nothing or the wrong labels stays near 0.9
    t = trainer(1)
    (logged,) = t.test(model, DataLoader(TensorDataset(digits["x_test"], digits["y_test"]), batch_size=100),
                       verbose=False)
    assert logged["test/error"] == pytest.approx(error, abs=1e-6)
    assert "test/rec" not in logged
    # the encoder was fine-tuned; the stack it was copied from is untouched
    assert torch.equal(stack[0].W, W_stack)
    assert (model.encoder.layers[0].weight - W_stack).abs().max() > 1e-3


def test_reconstruction_term_is_logged_has_gradient_and_keeps_reconstructions(digits, stack):
    rec = {}
    for alpha in (0.0, 0.05):
        L.seed_everything(0, verbose=False)
        encoder, decoder = unroll_autoencoder(stack)
        model = Classifier(encoder, 10, lr=0.01, reconstruction=alpha, decoder=decoder, seed=0)
        t = trainer(30)
        t.fit(model, labeled_loader(digits))
        with torch.no_grad():
            x = digits["x_test"]
            rec[alpha] = decoder.reconstruction_error(encoder(x), x).mean().item()
        if alpha:
            logged = t.callback_metrics
            assert logged["train/rec"] > 0
            assert logged["train/loss"].item() == pytest.approx((logged["train/ce"] + logged["train/rec"]).item(), rel=1e-5)
            model.zero_grad()
            model.loss_terms((digits["x_l"][:32], digits["y_l"][:32]), stage="train")["loss"].backward()
            assert decoder.layers[0].c.grad.abs().sum() > 0  # only the rec term reaches the decoder bias
    with torch.no_grad():
        x = digits["x_test"]
        rec_stack = F.binary_cross_entropy(stack.reconstruct(x), x, reduction="none").sum(1).mean().item()
    # classification alone drags the encoder away from what the decoder inverts
    assert rec[0.05] < 0.8 * rec[0.0], rec
    assert rec[0.05] < 1.2 * rec_stack, (rec, rec_stack)


def test_loss_terms_equal_cross_entropy_plus_weighted_reconstruction(digits, stack):
    encoder, decoder = unroll_autoencoder(copy.deepcopy(stack).double())
    model = Classifier(encoder, 10, reconstruction=0.3, decoder=decoder, seed=0)
    x, y = digits["x_l"][:50].double(), digits["y_l"][:50]
    terms = model.loss_terms((x, y), stage="train")
    p = torch.softmax(model(x), dim=1)
    ce = -p[torch.arange(50), y].log().mean()
    r = decoder(encoder(x))
    rec = -(x * r.log() + (1 - x) * (1 - r).log()).sum(1).mean()
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-12)
    assert terms["rec"].item() == pytest.approx(0.3 * rec.item(), rel=1e-10)
    assert terms["loss"].item() == pytest.approx(ce.item() + 0.3 * rec.item(), rel=1e-10)
    assert terms["error"].item() == pytest.approx((p.argmax(1) != y).double().mean().item())
    proba = model.predict_proba(x)
    assert torch.allclose(proba.sum(1), torch.ones(50, dtype=torch.float64))
    assert torch.equal(model.predict(x), proba.argmax(1))


def test_bad_labels_raise_naming_the_label(digits, stack):
    model = Classifier(UnrolledEncoder(stack), 10)
    x = digits["x_l"][:4]
    with pytest.raises(ValueError, match=r"label 10 is out of range for n_classes=10"):
        model.loss_terms((x, torch.tensor([0, 3, 10, 2])), stage="train")
    with pytest.raises(ValueError, match=r"label -1 is out of range"):
        model.loss_terms((x, torch.tensor([0, -1, 1, 2])), stage="train")
    with pytest.raises(ValueError, match="integers"):
        model.loss_terms((x, torch.tensor([0.0, 1.0, 1.0, 2.0])), stage="train")
    with pytest.raises(ValueError, match=r"shape \(B, 64\)"):
        model.loss_terms((x[:, :10], torch.tensor([0, 1, 1, 2])), stage="train")
    with pytest.raises(ValueError, match="out of range"):
        trainer(1).fit(model, DataLoader(TensorDataset(x, torch.tensor([0, 1, 12, 2])), batch_size=4))


def test_bad_hyperparameters_raise_naming_the_value(stack):
    encoder = UnrolledEncoder(stack)
    for kwargs, match in [(dict(lr=0.0), "lr must be > 0, got 0.0"),
                          (dict(optimizer="rmsprop"), "unknown optimizer 'rmsprop'"),
                          (dict(weight_decay=-1.0), "weight_decay must be >= 0, got -1.0"),
                          (dict(reconstruction=-0.1), "reconstruction must be >= 0, got -0.1"),
                          (dict(reconstruction=0.5), "reconstruction=0.5 needs a decoder"),
                          (dict(seed=1.5), "seed must be an integer, got 1.5"),
                          (dict(lr_decay=0.0), "lr_decay must be > 0, got 0.0"),
                          (dict(lr_decay=1.5), "lr_decay"),
                          (dict(lr_anneal_start=1.0), r"lr_anneal_start must be a fraction of the epochs in \[0, 1\)"),
                          (dict(lr_anneal_start=-0.1), "lr_anneal_start must be a fraction")]:
        with pytest.raises(ValueError, match=match):
            Classifier(encoder, 10, **kwargs)
    with pytest.raises(ValueError, match="n_classes must be an integer >= 2, got 1"):
        Classifier(encoder, 1)
    _, decoder = unroll_autoencoder(stack)  # tied to another encoder
    with pytest.raises(ValueError, match="not this encoder's"):
        Classifier(encoder, 10, reconstruction=0.1, decoder=decoder)
    other = Stack([AutoEncoder(64, 16)])
    with pytest.raises(ValueError, match="mirrors sizes"):
        Classifier(encoder, 10, decoder=unroll_autoencoder(other)[1])


class _Rates(L.Callback):
    """The learning rate each training epoch ran at."""

    def __init__(self):
        self.rates = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_lr_decay_trains_epoch_t_at_lr_times_decay_to_the_t_and_resumes_its_schedule(digits, stack, tmp_path):
    """``lr_decay``: Lightning steps the schedule once per epoch, so epoch t trains at
    lr * decay^t; stopped after 2 epochs and resumed from the checkpoint, the run goes on at
    lr * decay^2, not at lr."""
    loader = lambda: DataLoader(TensorDataset(digits["x_l"], digits["y_l"]), batch_size=50, shuffle=True)
    make = lambda: Classifier(UnrolledEncoder(stack), 10, lr=0.01, lr_decay=0.5, seed=0)
    whole = _Rates()
    L.seed_everything(0, verbose=False)
    L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu", deterministic=True,
              callbacks=[whole]).fit(make(), loader())
    assert whole.rates == pytest.approx([0.01, 0.005, 0.0025, 0.00125], rel=1e-12)
    first, rest = _Rates(), _Rates()
    L.seed_everything(0, verbose=False)
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu", deterministic=True, callbacks=[first, ckpt]).fit(make(), loader())
    L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu", deterministic=True, callbacks=[rest]).fit(
        make(), loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert first.rates + rest.rates == pytest.approx(whole.rates, rel=1e-12)
    constant = Classifier(UnrolledEncoder(stack), 10, lr=0.01, seed=0).configure_optimizers()
    assert isinstance(constant, torch.optim.Optimizer)  # lr_decay = 1: no schedule at all


class _StopAfter(L.Callback):
    """Stops the fit after ``n`` training epochs, as a kill between epochs would."""

    def __init__(self, n: int):
        self.n = n

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = trainer.current_epoch + 1 >= self.n


def test_lr_anneal_start_decays_linearly_to_zero_over_the_last_epochs_and_resumes(digits, stack, tmp_path):
    """``lr_anneal_start`` s of E epochs: epoch t < round(sE) at lr (times lr_decay^t), then
    lr (E - t) / (E - round(sE)), the Ladder paper's anneal; as Lightning runs it, and resumed
    from a checkpoint mid-anneal; a Trainer without a last epoch is refused by name."""
    loader = lambda: DataLoader(TensorDataset(digits["x_l"], digits["y_l"]), batch_size=50, shuffle=True)
    make = lambda decay=1.0: Classifier(UnrolledEncoder(stack), 10, lr=0.01, lr_decay=decay,
                                        lr_anneal_start=0.5, seed=0)
    fit = lambda module, epochs, cbs, **kw: L.Trainer(
        max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", deterministic=True, enable_checkpointing=any(
            isinstance(c, L.callbacks.ModelCheckpoint) for c in cbs), callbacks=cbs).fit(module, loader(), **kw)
    whole = _Rates()
    fit(make(), 6, [whole])  # E = 6, the anneal from epoch 3: factors 1, 1, 1, 1, 2/3, 1/3
    assert whole.rates == pytest.approx([0.01, 0.01, 0.01, 0.01, 0.01 * 2 / 3, 0.01 / 3], rel=1e-12)
    both = _Rates()
    fit(make(decay=0.5), 6, [both])  # times the exponential decay, epoch by epoch
    assert both.rates == pytest.approx([r * 0.5 ** t for t, r in enumerate(whole.rates)], rel=1e-12)
    short = _Rates()
    fit(make(), 5, [short])  # 5 epochs anneal over their own last ones, from round(2.5) = 2
    assert short.rates == pytest.approx([0.01, 0.01, 0.01, 0.01 * 2 / 3, 0.01 / 3], rel=1e-12)
    first, rest = _Rates(), _Rates()
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(make(), 6, [first, ckpt, _StopAfter(5)])  # killed in the anneal, resumed: it goes on
    fit(make(), 6, [rest], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert first.rates + rest.rates == pytest.approx(whole.rates, rel=1e-12)
    with pytest.raises(ValueError, match="give the Trainer max_epochs >= 1"):
        fit(make(), -1, [])
