"""The fast engine's data path and options: batches made on the compute device, the same
batches on resume and across shards, what the per-image torchvision pipeline gave, precision
and layout options, and the checks made before any work."""

import pytest
import torch
from torchvision.transforms import v2

import dwrprune
from dwrprune import DwrpruneError, TrainConfig, create_dataset, create_model, make_loader, train
from dwrprune.io.store import SampleStore
from dwrprune.training.device_data import DATA_PATH, BatchTransform, TensorLoader
from dwrprune.training.engine import check_precision


def _ds(n=40, **kw):
    return create_dataset("synthetic", "train", subset=n, native_resolution=12, num_classes=4,
                          **kw)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("resolution", [12, 8])
def test_tensor_datasets_get_a_tensor_loader_that_repeats_an_epoch(resolution):
    loader = make_loader(_ds(resolution=resolution), 16, shuffle=True, seed=3)
    assert isinstance(loader, TensorLoader) and len(loader) == 3
    a, b, other = _epoch(loader, 5), _epoch(loader, 5), _epoch(loader, 6)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], other[0][0])  # another epoch: another order and crops
    assert a[0][0].shape == (16, 3, resolution, resolution) and a[-1][0].shape[0] == 8
    seen = torch.cat([y for _, y in a])
    assert sorted(seen.tolist()) == sorted(torch.cat([y for _, y in other]).tolist())


def test_shards_together_are_the_whole_epoch():
    loader = make_loader(_ds(32), 16, shuffle=True, seed=1)
    whole = torch.cat([x for x, _ in _epoch(loader, 2)])
    parts = []
    for rank in range(2):
        s = loader.shard(rank, 2, train=True)
        s.set_epoch(2)
        parts.append(torch.cat([x for x, _ in s]))
        assert s.batch_size == 8
    # every-other image of the global order: the same images with the same crops
    assert torch.equal(torch.stack([parts[0], parts[1]], 1).flatten(0, 1), whole)


def test_crop_and_flip_are_torchvisions_for_the_drawn_offsets():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8)
    tf = BatchTransform(10, 10, (0.5,) * 3, (0.25,) * 3, augment=True)
    params = tf.draw(6, torch.Generator().manual_seed(1))
    params[0, 2], params[1, 2] = 0, 1  # one of each
    out = tf(x, params)
    pad = tf.padding
    for i in range(6):
        img = v2.functional.pad(x[i], [pad] * 4)
        img = v2.functional.crop(img, int(params[i, 0]), int(params[i, 1]), 10, 10)
        if params[i, 2]:
            img = v2.functional.horizontal_flip(img)
        want = (img.float() / 255 - 0.5) / 0.25
        assert torch.allclose(out[i], want, atol=1e-6), i


def test_evaluation_batches_match_the_per_image_pipeline():
    """The plain resize on the device is torchvision's on float images (the per-image
    pipeline resized uint8 with integer arithmetic and rounded: within a grey level of it)."""
    ds = create_dataset("synthetic", "val", native_resolution=16, resolution=11)
    x, _ = next(iter(make_loader(ds, 8)))
    base = ds.dataset
    ref = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Resize((11, 11), antialias=True),
                      v2.Normalize(base.info.mean, base.info.std)])
    idx = ds.indices[:8]
    want = torch.stack([ref(base.images[i]) for i in idx])
    assert torch.allclose(x, want, atol=1e-5)
    rounded = v2.Compose([v2.Resize((11, 11), antialias=True), v2.ToDtype(torch.float32,
                          scale=True), v2.Normalize(base.info.mean, base.info.std)])
    old = torch.stack([rounded(base.images[i]) for i in idx])
    assert (x - old).abs().max() <= 1.01 / 255 / min(base.info.std)


def test_indexing_one_image_uses_the_same_transform():
    ds = create_dataset("synthetic", "val", native_resolution=12)
    x, _ = next(iter(make_loader(ds, 4)))
    assert torch.equal(ds[0][0], x[0])


def test_other_datasets_keep_a_dataloader():
    xs = torch.randn(10, 3, 8, 8)
    ds = torch.utils.data.TensorDataset(xs, torch.zeros(10, dtype=torch.long))
    loader = make_loader(ds, 4)
    assert isinstance(loader, torch.utils.data.DataLoader)


@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"channels_last": True}])
def test_precision_and_layout_train_close_to_fp32(options):
    tr = make_loader(_ds(64), 16, shuffle=True)

    def trained(**kw):
        torch.manual_seed(0)
        m = create_model("resnet_tiny", num_classes=4, in_channels=3)
        train(m, tr, TrainConfig(steps=4, lr=0.05, **kw), progress=False, log=False)
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    ref, other = trained(precision="fp32"), trained(**{"precision": "fp32", **options})
    assert torch.isfinite(other).all()
    tol = 1e-4 if "channels_last" in options else 5e-2  # bf16 rounds activations
    assert (ref - other).abs().max() < tol
    assert options.get("precision") != "bf16" or not torch.equal(ref, other)


def test_precision_the_device_cannot_run_is_one_error():
    with pytest.raises(DwrpruneError, match="fp16 needs a GPU"):
        check_precision("fp16", "cpu")
    with pytest.raises(DwrpruneError, match="not known; choose auto | fp32 | bf16 | fp16"):
        TrainConfig(precision="fp8").validate()
    tr = make_loader(_ds(16), 8)
    with pytest.raises(DwrpruneError, match="fp16 needs a GPU"):
        train(create_model("resnet_tiny", num_classes=4, in_channels=3), tr,
              TrainConfig(steps=1, precision="fp16"), progress=False, log=False)


def test_divergence_is_caught_without_a_sync_per_step():
    tr = make_loader(_ds(64), 16, shuffle=True)
    torch.manual_seed(0)
    m = create_model("resnet_tiny", num_classes=4, in_channels=3)
    with pytest.raises(DwrpruneError, match="training diverged .* lower the learning rate"):
        train(m, tr, TrainConfig(steps=60, lr=1e6, momentum=0.0), progress=False, log=False)


def test_a_collection_begun_on_the_old_data_path_is_not_resumed(tmp_path):
    store = SampleStore(tmp_path / "samples.sqlite")
    store.bind_data_path(DATA_PATH, resumed=False)  # a new collection records its path
    assert store.get_meta("data_path") == DATA_PATH
    store.bind_data_path(DATA_PATH, resumed=True)  # resumed on the same path: fine
    old = SampleStore(tmp_path / "old.sqlite")  # an older dwrprune recorded none
    with pytest.raises(DwrpruneError, match="collected on data path 1 .*per-image.*new --out"):
        old.bind_data_path(DATA_PATH, resumed=True)


@pytest.mark.parametrize("jobs,match", [(0, "--jobs must be a whole number from 1 to"),
                                        (10_000, "--jobs must be a whole number from 1 to"),
                                        ("2", "jobs must be a whole number")])
def test_jobs_out_of_range_is_one_error(jobs, match):
    with pytest.raises(DwrpruneError, match=match):
        dwrprune.PipelineConfig.from_dict({"jobs": jobs})


def test_auto_precision_is_bf16_only_where_the_device_computes_it(monkeypatch):
    import dwrprune.training.engine as engine
    from dwrprune.pipeline import PipelineConfig

    assert TrainConfig().precision == "auto"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(engine, "native_bf16", lambda device, n=native: n)
        assert engine.resolve_precision("auto", "cpu") == expected
        assert engine.resolve_precision("fp32", "cpu") == "fp32"  # a choice is kept
        # a pipeline records what auto meant on this machine, so a resumed collection on
        # another machine is refused rather than silently trained in another precision
        assert PipelineConfig.from_dict({}).precision == expected
        assert PipelineConfig.from_dict({"precision": "fp32"}).precision == "fp32"


def test_auto_precision_trains_as_the_precision_it_resolves_to(monkeypatch, tmp_path):
    import dwrprune.training.engine as engine

    monkeypatch.setattr(engine, "native_bf16", lambda device: True)
    tr = make_loader(_ds(32), 8, shuffle=True)

    def trained(precision, folder):
        torch.manual_seed(0)
        m = create_model("resnet_tiny", num_classes=4, in_channels=3)
        train(m, tr, TrainConfig(steps=2, lr=0.05, precision=precision), progress=False,
              log=False, checkpoint_dir=folder)
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    auto = trained("auto", tmp_path / "a")
    assert torch.equal(auto, trained("bf16", tmp_path / "b"))
    assert not torch.equal(auto, trained("fp32", tmp_path / "c"))
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    assert state["train_config"]["precision"] == "bf16"  # the checkpoint says what ran
