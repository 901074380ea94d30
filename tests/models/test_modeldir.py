import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from serkit.data.dataset import Preprocessing
from serkit.errors import ModelDirError
from serkit.models import build_model, load_model, save_model
from tests.helpers import SSL_TINY as TINY
from tests.helpers import batch as _batch
from tests.helpers import ssl_config as tiny_config

LABELS = ["anger", "calm", "sadness"]


@pytest.fixture
def saved_cnn(tmp_path):
    model = build_model("cnn6", {"dropout": 0.1}, 3).eval()
    path = save_model(tmp_path / "m", model, LABELS, Preprocessing(trim_silence_db=40), {"seed": 1})
    return model, path


def test_round_trip_gives_bit_identical_predictions(saved_cnn):
    model, path = saved_cnn
    saved = load_model(path)
    assert saved.labels == LABELS and saved.preprocessing.trim_silence_db == 40
    assert saved.config["provenance"] == {"seed": 1} and saved.config["parameters"]["total"] == model.total_parameters()
    wave, mask = _batch([16000, 11000])
    with torch.no_grad():
        assert torch.equal(model(wave, mask), saved.model(wave, mask))


@pytest.mark.parametrize("backbone", ["wav2vec2", "wavlm"])
def test_ssl_round_trip_is_self_contained(tmp_path, backbone):
    model = build_model("ssl", {"backbone": backbone, "hf_config": tiny_config(backbone)}, 3).eval()
    path = save_model(tmp_path / "m", model, LABELS, Preprocessing())
    assert json.loads((path / "backbone_config.json").read_text())["hidden_size"] == 32
    saved = load_model(path)
    wave, mask = _batch([8000, 6000])
    with torch.no_grad():
        assert torch.equal(model(wave, mask), saved.model(wave, mask))


def test_ssl_from_a_local_transformers_checkpoint(tmp_path):
    from transformers import HubertConfig, HubertModel

    backbone = HubertModel(HubertConfig(**TINY))
    backbone.save_pretrained(tmp_path / "ckpt")  # config.json + model.safetensors
    model = build_model("ssl", {"backbone": "hubert", "checkpoint": str(tmp_path / "ckpt")}, 3)
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor)
    for f in (tmp_path / "ckpt").glob("*.safetensors"):
        f.unlink()
    torch.save(backbone.state_dict(), tmp_path / "ckpt" / "pytorch_model.bin")
    with pytest.raises(ModelDirError, match="no .safetensors weights; serkit never unpickles"):
        build_model("ssl", {"backbone": "hubert", "checkpoint": str(tmp_path / "ckpt")}, 3)


def test_pickle_files_are_refused(tmp_path, saved_cnn):
    model, _ = saved_cnn
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ModelDirError, match=r"model\.pt is a pickle checkpoint; serkit loads only safetensors"):
        load_model(tmp_path / "model.pt")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(tmp_path / "model.pt", folder / "last.ckpt")
    with pytest.raises(ModelDirError, match=r"last\.ckpt is a pickle checkpoint"):
        load_model(folder)


def test_missing_or_broken_config_is_explained(saved_cnn, tmp_path):
    _, path = saved_cnn
    with pytest.raises(ModelDirError, match="model directory not found"):
        load_model(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "config.json").unlink()
    with pytest.raises(ModelDirError, match=r"not a serkit model directory: no config\.json"):
        load_model(broken)
    (broken / "config.json").write_text("{oops")
    with pytest.raises(ModelDirError, match=r"config\.json is not valid JSON"):
        load_model(broken)
    (broken / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(ModelDirError, match="looks like a transformers checkpoint"):
        load_model(broken)


def test_mismatched_config_is_refused(saved_cnn, tmp_path):
    _, path = saved_cnn
    other = tmp_path / "other"
    shutil.copytree(path, other)
    config = json.loads((other / "config.json").read_text())
    config["labels"] = LABELS + ["fear"]  # 4 labels, weights for 3
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"do not match .*wrong shape \['fc2.bias', 'fc2.weight'\]"):
        load_model(other)
    config["labels"] = LABELS
    config["architecture"] = "vgg15"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="do not match"):
        load_model(other)
    config["architecture"] = "transformer9000"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="unknown model architecture 'transformer9000'"):
        load_model(other)
    del config["labels"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"lacks \['labels'\]"):
        load_model(other)


def test_damaged_weights_and_missing_weights(saved_cnn, tmp_path):
    _, path = saved_cnn
    other = tmp_path / "other"
    shutil.copytree(path, other)
    (other / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelDirError, match="cannot read .* as safetensors"):
        load_model(other)
    (other / "model.safetensors").unlink()
    with pytest.raises(ModelDirError, match=r"has no model\.safetensors"):
        load_model(other)
    save_file({"x": torch.zeros(1)}, str(other / "model.safetensors"))
    with pytest.raises(ModelDirError, match="missing"):
        load_model(other)


def test_save_never_overwrites(saved_cnn):
    model, path = saved_cnn
    before = (path / "model.safetensors").read_bytes()
    with pytest.raises(Exception, match="already exists; serkit never overwrites"):
        save_model(path, build_model("cnn6", {}, 3), LABELS, Preprocessing())
    assert (path / "model.safetensors").read_bytes() == before


def test_an_unreadable_config_or_weights_file_is_called_unreadable_not_missing_or_damaged(saved_cnn, monkeypatch):
    import builtins
    import errno
    import pathlib

    _, path = saved_cnn

    def denied(file):
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    read_text, real_open = pathlib.Path.read_text, builtins.open
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self, *a, **k: denied(self) if self.name == "config.json" else read_text(self, *a, **k))
    with pytest.raises(ModelDirError, match=r"^cannot read .*config\.json \(Permission denied\); check its permissions"):
        load_model(path)
    monkeypatch.undo()
    # safetensors itself calls an unreadable file "No such file or directory"
    monkeypatch.setattr("serkit.models.modeldir.open", lambda f, *a, **k: denied(f) if str(f).endswith(".safetensors") else real_open(f, *a, **k),
                        raising=False)
    with pytest.raises(ModelDirError, match=r"^cannot read .*model\.safetensors \(Permission denied\); check its permissions") as err:
        load_model(path)
    assert "damaged" not in str(err.value) and "No such file" not in str(err.value)


def test_a_full_disk_while_saving_weights_leaves_no_model_directory(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from serkit.errors import DiskFullError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr("serkit.models.modeldir.save_file", full)
    with pytest.raises(DiskFullError, match=f"no space left on device while writing model directory {tmp_path / 'm'};"):
        save_model(tmp_path / "m", build_model("cnn6", {}, 3), LABELS, Preprocessing())
    assert list(tmp_path.iterdir()) == []
