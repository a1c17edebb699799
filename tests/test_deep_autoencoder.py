"""The deep autoencoder on scikit-learn's digits: fine-tuning a 64-32-8 stack end to end."""
import lightning.pytorch as L
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from finetune.deep_autoencoder import DeepAutoencoder
from pretrain.autoencoder import AutoEncoder
from pretrain.stack import GreedyStack, Stack


def trainer(epochs):
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     deterministic=True)


@pytest.fixture(scope="module")
def digits():
    X, _ = load_digits(return_X_y=True)
    X = torch.tensor(X[np.random.default_rng(0).permutation(len(X))] / 16.0, dtype=torch.float32)
    return X[:1300], X[1300:]


@pytest.fixture(scope="module")
def stack(digits):
    """64-32-8 sigmoid autoencoders, each pretrained briefly on the codes of the one below."""
    def fit_layer(k, layer, codes, val_codes):
        trainer(8).fit(layer, DataLoader(TensorDataset(codes), batch_size=32, shuffle=True))

    L.seed_everything(0, verbose=False)
    layers = [AutoEncoder(64, 32, lr=0.1, momentum=0.9, seed=0),
              AutoEncoder(32, 8, lr=0.1, momentum=0.9, seed=1)]
    return GreedyStack(layers).fit(digits[0], fit_layer)


def squared_error(model, X):
    with torch.no_grad():
        return ((model.reconstruct(X) - X) ** 2).sum(1).mean().item()


def test_fine_tuning_lowers_test_squared_error(digits, stack):
    X_train, X_test = digits
    W_stack = stack[0].W.detach().clone()
    model = DeepAutoencoder(stack, lr=1e-2, seed=0)
    before = squared_error(model, X_test)
    assert before == pytest.approx(((stack.reconstruct(X_test) - X_test) ** 2).sum(1).mean().item(), rel=1e-6)
    L.seed_everything(0, verbose=False)
    trainer(15).fit(model, DataLoader(TensorDataset(X_train), batch_size=32, shuffle=True))
    after = squared_error(model, X_test)
    assert after < 0.85 * before, (before, after)  # measured 2.16 -> 1.58
    (logged,) = trainer(1).test(model, DataLoader(TensorDataset(X_test), batch_size=100), verbose=False)
    assert logged["test/squared_error"] == pytest.approx(after, rel=1e-5)
    assert logged["test/rec"] > logged["test/squared_error"]  # cross-entropy of grey pixels > SE
    assert torch.equal(stack[0].W, W_stack)  # the stack is a copy source only
    assert model.decoder.layers[1].W is model.encoder.layers[0].weight  # fine-tuning kept the tie


def test_without_pretraining_has_the_same_network_and_fresh_seeded_weights(stack):
    pre = DeepAutoencoder(stack)
    a = DeepAutoencoder.without_pretraining(stack, seed=3)
    b = DeepAutoencoder.without_pretraining(stack, seed=3)
    c = DeepAutoencoder.without_pretraining(stack, seed=4)
    assert a.sizes == pre.sizes == [64, 32, 8] and a.decoder.sizes == [8, 32, 64]
    shapes = lambda m: [(n, tuple(p.shape)) for n, p in m.named_parameters()]  # noqa: E731
    assert shapes(a) == shapes(pre)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.encoder.layers[0].weight, c.encoder.layers[0].weight)
    W = a.encoder.layers[0].weight
    assert not torch.equal(W, pre.encoder.layers[0].weight)
    bound = 4 * (6 / (64 + 32)) ** 0.5  # Glorot-uniform for sigmoid units, as a fresh layer
    assert W.abs().max() <= bound and W.abs().max() > 0.9 * bound
    assert a.hparams.pretrained is False and a.hparams.seed == 3


def test_loss_is_half_squared_error_for_linear_visible_units():
    stack = Stack([AutoEncoder(6, 3, visible_unit="linear", loss="mse", tied=False, seed=0)]).double()
    model = DeepAutoencoder(stack, untie=True)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    terms = model.loss_terms(x)
    r = stack.reconstruct(x)
    assert terms["rec"].item() == pytest.approx(0.5 * ((r - x) ** 2).sum(1).mean().item(), rel=1e-12)
    assert terms["squared_error"].item() == pytest.approx(2 * terms["rec"].item(), rel=1e-12)


def test_bad_input_raises(stack):
    with pytest.raises(ValueError, match="lr must be > 0, got -1"):
        DeepAutoencoder(stack, lr=-1)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        DeepAutoencoder(stack, optimizer="lbfgs")
    model = DeepAutoencoder(stack)
    with pytest.raises(ValueError, match=r"shape \(B, 64\)"):
        model.loss_terms(torch.rand(4, 63))
    with pytest.raises(ValueError, match=r"inputs in \[0, 1\]"):
        model.loss_terms(torch.rand(4, 64) * 16)



def test_the_pipeline_fine_tunes_with_the_configs_weight_decay(digits, stack, tmp_path):
    import mlflow
    from types import SimpleNamespace

    from pipelines.config import load_config
    from pipelines.stages.finetuning import fit_autoencoder_module

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    eid = mlflow.create_experiment("t")
    split = SimpleNamespace(X_pool=digits[0].numpy(), X_valid=digits[1].numpy())
    norms = {}
    for weight_decay in (0.0, 0.05):
        cfg = load_config("mnist_deep_autoencoder", ["data.name=digits", "finetune.deep_autoencoder_epochs=3",
                                                     f"finetune.weight_decay={weight_decay}", "finetune.lr=0.01"])
        with mlflow.start_run(experiment_id=eid) as run:
            module, _ = fit_autoencoder_module(cfg, split, stack, uri=uri, run_id=run.info.run_id)
        assert module.hparams.weight_decay == weight_decay
        norms[weight_decay] = sum(float(p.detach().square().sum()) for p in module.parameters())
    # Adam's L2 term pulls every weight towards 0 (measured: 1908 against 2368)
    assert norms[0.05] < 0.9 * norms[0.0], norms


def test_without_pretraining_needs_no_trained_stack(digits, tmp_path):
    """``fit_autoencoder_module(stack=None, pretrained=False)`` trains the network a trained stack
    of the config would give without pretraining, weight for weight; a pretrained fit needs one."""
    import mlflow
    from types import SimpleNamespace

    from pipelines.config import load_config
    from pipelines.stages.finetuning import fit_autoencoder_module
    from pipelines.stages.pretraining import build_layers

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    eid = mlflow.create_experiment("t")
    split = SimpleNamespace(X_pool=digits[0][:300].numpy(), X_valid=digits[1][:100].numpy())
    cfg = load_config("mnist_deep_autoencoder", ["data.name=digits", "finetune.deep_autoencoder_epochs=1"])
    trained = Stack(build_layers(cfg, 64))
    with torch.no_grad():  # weights unlike the untrained ones, as pretraining would leave them
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    fitted = {}
    for name, stack in (("trained stack", trained), ("none", None)):
        with mlflow.start_run(experiment_id=eid) as run:
            module, _ = fit_autoencoder_module(cfg, split, stack, uri=uri, run_id=run.info.run_id,
                                               pretrained=False)
        fitted[name] = module
    a, b = fitted["trained stack"], fitted["none"]
    assert a.sizes == b.sizes == [64] + [spec.n_hidden for spec in cfg.pretrain.layers]
    assert a.encoder.units == b.encoder.units and a.encoder.units[-1] == "linear"  # the Gaussian code RBM
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    with mlflow.start_run(experiment_id=eid) as run, pytest.raises(ValueError, match="needs the pretrained stack"):
        fit_autoencoder_module(cfg, split, None, uri=uri, run_id=run.info.run_id, pretrained=True)
