"""`--encoder timm:NAME` (any timm model without its classifier) and `--pretrained FILE` (local safetensors)."""

import sys

import pytest
import torch
from safetensors.torch import save_file

import supcon
from supcon.cli import main
from supcon.config import Config
from supcon.evaluate.inference import outputs
from supcon.models import build_encoder, load_pretrained
from supcon.runs.load import load_encoder
from supcon.stages import load_data, train_run

# Two families with different heads: MobileNetV3 has a convolution after its pooling (1024 features out of a
# 288-channel trunk); timm's test_vit is a transformer, whose position embeddings are sized from img_size.
ARCHS = ("mobilenetv3_small_050", "test_vit")


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm", reason="the timm encoders need the timm extra: pip install 'supcon[timm]'")


def save(state, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.mark.parametrize("arch", ARCHS)
def test_timm_encoder_without_its_classifier(timm, arch):
    encoder = build_encoder(f"timm:{arch}", in_channels=1, image_size=32)
    reference = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=1)
    assert {k for k in encoder.backbone.state_dict()} == set(reference.state_dict())  # no classifier weights
    encoder.eval()
    with torch.no_grad():
        z = encoder(torch.rand(3, 1, 32, 32))
    assert z.shape == (3, encoder.out_dim)
    assert torch.allclose(z.norm(dim=1), torch.ones(3))  # the SupCon representation is normalised


@pytest.mark.parametrize("arch, stage", [(ARCHS[0], "ce"), (ARCHS[1], "pretrain")])
def test_one_training_step_through_the_training_code(timm, shared_data, tmp_path, arch, stage):
    cfg = Config(dataset=f"npz:{shared_data / 'imagenet5_64.npz'}", image_size=32, max_train=10, max_val=10,
                 batch_size=10, epochs=1, encoder=f"timm:{arch}", knn_every="0", tsne=False, quiet=True,
                 proj_hidden=64, proj_dim=16)
    data = load_data(cfg)
    torch.manual_seed(cfg.seed)  # as the stage seeds before it builds the encoder: its starting weights
    start = build_encoder(cfg.encoder, 3, 32, normalize=stage != "ce").state_dict()
    result = (train_run("ce", cfg, data, tmp_path) if stage == "ce"
              else train_run("supcon", cfg, data, tmp_path, until="pretrain"))
    assert len(result.fit.history) == 1 and result.fit.history[0]["loss"] > 0
    trained = result.encoder.state_dict()
    changed = [k for k, v in start.items() if v.is_floating_point() and not torch.equal(v, trained[k].cpu())]
    assert len(changed) > len(start) // 3, "one optimizer step moves most weights"
    # the run directory rebuilds the same timm encoder from config.yaml and its weights
    encoder, _, inputs = load_encoder(tmp_path)
    x = data.val.images[:4]
    assert torch.allclose(outputs(encoder, x, transform=inputs.plain()),
                          outputs(result.encoder, x, transform=inputs.plain()), atol=1e-5)
    if stage == "ce":
        assert supcon.load_run(tmp_path).predict(x).probabilities.shape == (4, 5)


def test_pretrained_loads_a_timm_checkpoint_and_ignores_its_classifier(timm, tmp_path):
    torch.manual_seed(1)
    full = timm.create_model("test_resnet", pretrained=False, num_classes=7)  # what a timm checkpoint holds
    save(full.state_dict(), tmp_path / "test_resnet.safetensors")
    encoder = build_encoder("timm:test_resnet", 3, 32, pretrained=tmp_path / "test_resnet.safetensors")
    for key, value in encoder.backbone.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    # a run's encoder.safetensors (keys under backbone.) is a starting point as well
    save(encoder.state_dict(), tmp_path / "encoder.safetensors")
    again = build_encoder("timm:test_resnet", 3, 32, pretrained=tmp_path / "encoder.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), again.state_dict().values(),
                                                 strict=True))


def test_pretrained_torchvision_resnet_without_step_counters(tmp_path):
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    save({k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")},
         tmp_path / "resnet18.safetensors")
    encoder = build_encoder("resnet18", 3, 64, pretrained=tmp_path / "resnet18.safetensors")
    assert torch.equal(encoder.backbone.conv1.weight, resnet.conv1.weight)


def test_pretrained_that_does_not_fit_is_one_line(timm, tmp_path):
    save(build_encoder("timm:test_resnet", 3, 32).backbone.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"does not fit encoder timm:test_resnet: 1 key\(s\) of another shape "
                                         r"\(first: conv1.0.weight, \(16, 3, 3, 3\) in the file, \(16, 1, 3, 3\)"):
        build_encoder("timm:test_resnet", 1, 32, pretrained=tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"does not fit encoder smallcnn: 20 missing key\(s\) \(first: "
                                         r"features.0.weight\); \d+ unexpected key\(s\)"):
        build_encoder("smallcnn", 3, 32, pretrained=tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="pretrained weights not found"):
        load_pretrained(build_encoder("smallcnn", 3, 32), tmp_path / "nowhere.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read .*junk.safetensors as safetensors"):
        build_encoder("smallcnn", 3, 32, pretrained=tmp_path / "junk.safetensors")


def test_cli_errors(timm, tmp_path, capsys):
    save({"x": torch.zeros(1)}, tmp_path / "w.safetensors")
    quick = ["--max-train", "20", "--max-val", "20", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]
    assert main(["ce", "--encoder", "timm:smallcnn", *quick]) == 2
    assert "timm has no model 'smallcnn'" in capsys.readouterr().err
    assert main(["ce", "--encoder", "timm:test_resnet", "--pretrained", str(tmp_path / "w.safetensors"), *quick]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit encoder timm:test_resnet" in err
    assert main(["ce", "--encoder", "vgg16", *quick]) == 2
    assert "encoder must be one of auto, smallcnn, resnet18" in capsys.readouterr().err


def test_without_timm_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ImportError, match=r"needs the timm package: pip install 'supcon\[timm\]'"):
        build_encoder("timm:resnet10t", 3, 32)
    assert Config(encoder="timm:resnet10t").encoder == "timm:resnet10t"  # the name is checked when it is built
    with pytest.raises(ValueError, match="encoder must be one of auto, .*or timm:NAME"):
        Config(encoder="timm:")
