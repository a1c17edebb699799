"""Your own data: the .npz keys, the pool size, image shapes, ``data show npz``, bad overrides."""
import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_digits

from pipelines.cli import main
from pipelines.config import ConfigError, load_config
from pipelines.data.datasets import NPZ_HOLDOUT, load_dataset
from pipelines.data.splits import make_split
from pipelines.run import run_pipeline


def _images_28(n: int | None = None):
    """The 8x8 digits scaled up to 28x28 (each pixel 3x3, a 2-pixel border), flat: (n, 784)."""
    X, y = load_digits(return_X_y=True)
    big = np.kron(X.reshape(-1, 8, 8) / 16.0, np.ones((3, 3)))
    big = np.pad(big, ((0, 0), (2, 2), (2, 2))).reshape(len(X), 784).astype(np.float32)
    return (big, y) if n is None else (big[:n], y[:n])


@pytest.fixture()
def own_npz(tmp_path):
    X, y = _images_28()
    path = tmp_path / "mine.npz"
    np.savez(path, X=X[:1500], y=y[:1500], X_test=X[1500:], y_test=y[1500:])
    return path, X, y


def test_an_npz_with_x_test_uses_it_and_flat_784_rows_are_28x28_images(own_npz):
    path, X, y = own_npz
    ds = load_dataset("npz", path=path)
    np.testing.assert_array_equal(ds.X_test, X[1500:])
    np.testing.assert_array_equal(ds.y_test, y[1500:])
    assert len(ds.X) == 1500  # nothing of X held out as a test set
    assert ds.n_valid == round(NPZ_HOLDOUT * 1500)
    assert ds.image_shape == (28, 28)


def test_an_npz_without_x_test_holds_out_a_fifth(tmp_path):
    X, y = _images_28(500)
    np.savez(tmp_path / "a.npz", X=X, y=y)
    ds = load_dataset("npz", path=tmp_path / "a.npz")
    assert len(ds.X_test) == round(NPZ_HOLDOUT * 500) and len(ds.X) == 500 - len(ds.X_test)


def test_image_shape_from_the_file_or_the_config_and_bad_ones_named(tmp_path):
    X, y = load_digits(return_X_y=True)
    X = (X[:300, :60] / 16.0).astype(np.float32)  # 60 features: no shape of its own
    np.savez(tmp_path / "plain.npz", X=X, y=y[:300])
    np.savez(tmp_path / "shaped.npz", X=X, y=y[:300], image_shape=np.array([6, 10]))
    np.savez(tmp_path / "bad.npz", X=X, y=y[:300], image_shape=np.array([7, 7]))
    assert load_dataset("npz", path=tmp_path / "plain.npz").image_shape is None
    assert load_dataset("npz", path=tmp_path / "shaped.npz").image_shape == (6, 10)
    assert load_dataset("npz", path=tmp_path / "plain.npz", image_shape=(10, 6)).image_shape == (10, 6)
    with pytest.raises(ValueError, match=r"image_shape \[7, 7\].*rows \* cols = 60"):
        load_dataset("npz", path=tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"data.image_shape=\[8, 8\] does not fit .* 60 features"):
        load_dataset("npz", path=tmp_path / "plain.npz", image_shape=(8, 8))
    cfg = load_config("quickstart", ["data.image_shape=[6, 10]"])
    assert cfg.data.image_shape == (6, 10)


def test_pool_keeps_the_first_rows_and_the_same_validation_set():
    ds = load_dataset("digits")
    full = make_split(ds, labels=50, seed=0)
    small = make_split(ds, labels=50, seed=0, pool=300)
    assert len(full.X_pool) == len(ds.X) - ds.n_valid and len(small.X_pool) == 300
    np.testing.assert_array_equal(small.X_pool, ds.X[:300])
    np.testing.assert_array_equal(small.X_valid, full.X_valid)
    assert small.lab_index.max() < 300  # the labels come from the pool that is kept
    with pytest.raises(ValueError, match=r"data.pool must be .* \[1, 1000\].*got 5000"):
        make_split(ds, labels=50, seed=0, pool=5000)
    # unset, the pool is out of the cache keys: caches made before the setting are found again
    assert load_config("quickstart").digest() == load_config("quickstart", ["data.pool=null"]).digest()
    assert load_config("quickstart", ["data.pool=300"]).digest() != load_config("quickstart").digest()


def test_your_own_28x28_images_end_to_end(own_npz, tmp_path):
    """The user story: an .npz of flat 28x28 images, a smaller pool, image figures, a run named
    for the file."""
    path, _, _ = own_npz
    cfg = load_config("quickstart", [
        "data.name=npz", f"data.path={path}", "data.pool=400", "pretrain.epochs=1",
        "pretrain.layers=[{kind: cae, n_hidden: 16}]", "finetune.methods=[mtc]",
        "finetune.labels=100", "finetune.epochs=2", "finetune.n_tangents=3", "baselines.methods=[]",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"])
    try:
        result = run_pipeline(cfg, root=tmp_path / "mlruns")
        runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment])
        names = dict(zip(runs.run_id, runs["tags.mlflow.runName"]))
        assert names[result.run_id] == "mine-npz L100 s0 mtc"
        parent = runs[runs.run_id == result.run_id].iloc[0]
        assert parent["params.data.pool"] == "400"
        layer = next(r for r, n in names.items() if n.startswith("layer 1"))
        mtc = next(r for r, n in names.items() if n == "finetune mtc")
        client = mlflow.MlflowClient()
        assert {"figures/filters.png", "figures/reconstructions.png"} <= {
            f.path for f in client.list_artifacts(layer, "figures")}
        assert "figures/tangents.png" in {f.path for f in client.list_artifacts(mtc, "figures")}
        pool = next(i for i in client.get_run(result.run_id).inputs.dataset_inputs
                    if i.tags[0].value == "pool")
        assert '"features_shape": [400, 784]' in pool.dataset.profile
    finally:
        mlflow.set_tracking_uri(None)


def test_data_show_npz_takes_a_path(own_npz, tmp_path):
    path, _, _ = own_npz
    out = tmp_path / "grid.png"
    res = CliRunner().invoke(main, ["data", "show", "npz", "--path", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 1000 and "1500 training and 297 test examples" in res.output
    res = CliRunner().invoke(main, ["data", "show", "npz"])
    assert res.exit_code == 2 and "--path FILE.npz" in res.output
    X, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "flat.npz", X=(X[:, :60] / 16.0), y=y)
    res = CliRunner().invoke(main, ["data", "show", "npz", "--path", str(tmp_path / "flat.npz")])
    assert res.exit_code == 2 and "--image-shape ROWS COLS" in res.output
    res = CliRunner().invoke(main, ["data", "show", "npz", "--path", str(tmp_path / "flat.npz"),
                                    "--image-shape", "6", "10", "--out", str(tmp_path / "f.png")])
    assert res.exit_code == 0, res.output


def test_a_bad_set_is_reported_as_the_override_given():
    with pytest.raises(ConfigError) as err:
        load_config("quickstart", ["finetune.labels=abc"])
    msg = str(err.value)
    assert msg.startswith("invalid override: --set finetune.labels=abc: finetune.labels:")
    assert "quickstart.yaml" not in msg  # the shipped file is not what is wrong
    res = CliRunner().invoke(main, ["run", "--set", "data.pool=0"])
    assert res.exit_code == 2 and "--set data.pool=0: data.pool" in res.output
