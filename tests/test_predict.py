"""Using trained models: predict.py on a user's own image files, pretrained.load and torch.hub."""
import numpy as np
import pytest
import torch
from PIL import Image

import plotting
import predict
import pretrained
import train
from conftest import REPO


def predict_cpu(argv):
    return predict.main(["--device", "cpu", *argv])


@pytest.fixture
def tiny_run(tiny_dataset, tmp_path):
    train.main(["--dataset", "tiny", "--device", "cpu", "--data-root", str(tiny_dataset),
                "--runs-root", str(tmp_path / "runs"), "--T", "6", "--c-mid", "4", "--readout-width", "8",
                "--batch-size", "16", "--epochs", "1", "--min-epochs", "0", "--amp", "off", "--no-progress",
                "--run-name", "r"])
    return tmp_path / "runs" / "r"


def squares_image(mode="RGB", size=16):
    values = np.zeros((size, size, 3), np.uint8)
    values[3:9, 4:10] = 200
    return Image.fromarray(values).convert(mode)


def test_predict_writes_a_coloured_mask_per_image(tiny_run, tmp_path, capsys):
    squares_image().save(tmp_path / "mine.png")
    predict_cpu([str(tmp_path / "mine.png"), "--model", str(tiny_run), "--out", str(tmp_path / "out"),
                  "--save-ids", "--animate"])
    model = pretrained.load(tiny_run)
    x = torch.from_numpy(np.asarray(squares_image(), np.float32) / 255).permute(2, 0, 1)
    expected = model(x[None]).argmax(1)[0].numpy()
    ids = np.load(tmp_path / "out" / "mine_classes.npy")
    assert ids.dtype == np.uint8 and np.array_equal(ids, expected)
    colours = (np.array(plotting.class_colours(3)) * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "mine_mask.png")), colours[expected])
    for name in ("mine_panel.png", "mine_waves.gif", "mine_waves.png"):
        assert (tmp_path / "out" / name).is_file()
    assert "mine.png ->" in capsys.readouterr().out


def test_predict_converts_what_the_model_expects(tiny_run, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    squares_image("L").save(folder / "gray.png")  # a gray image for an RGB model
    squares_image("RGBA").save(folder / "alpha.png")
    squares_image().save(folder / "photo.jpg")
    sixteen = (np.asarray(squares_image("L"), np.uint16) * 257)
    Image.fromarray(sixteen).save(folder / "deep.png")  # 16-bit gray
    (folder / "notes.txt").write_text("not an image")  # folders: only PNG and JPEG files are taken
    predict_cpu([str(folder), "--model", str(tiny_run), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "gray copied into 3 channels" in out and "transparency composited onto black" in out
    assert {p.name for p in (tmp_path / "out").glob("*_mask.png")} == \
        {"gray_mask.png", "alpha_mask.png", "photo_mask.png", "deep_mask.png"}
    x16, _ = predict.to_model_input(folder / "deep.png", 3, (16, 16))
    x8, _ = predict.to_model_input(folder / "gray.png", 3, (16, 16))
    torch.testing.assert_close(x16, x8)  # 16-bit values scaled to [0, 1] like 8-bit ones


def test_predict_refuses_what_it_cannot_convert_before_writing(tiny_run, tmp_path, capsys):
    squares_image(size=40).save(tmp_path / "large.png")
    (tmp_path / "fake.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit) as exit_info:
        predict_cpu([str(tmp_path / "large.png"), str(tmp_path / "fake.png"), "--model", str(tiny_run),
                      "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "large.png: 40x40 pixels, but the model was trained on 16x16 images" in err and "--resize" in err
    assert "fake.png: cannot be read as an image" in err
    assert not (tmp_path / "out").exists()
    predict_cpu([str(tmp_path / "large.png"), "--model", str(tiny_run), "--out", str(tmp_path / "out"), "--resize"])
    assert np.asarray(Image.open(tmp_path / "out" / "large_mask.png")).shape == (16, 16, 3)
    with pytest.raises(SystemExit):
        predict_cpu([str(tmp_path / "large.png"), "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "is not a shipped model" in capsys.readouterr().err


def test_shipped_models_load_in_one_line():
    for name in pretrained.SHIPPED:
        model = pretrained.load(name)
        assert not model.training and model.class_names[0] == "background"
        info_size = 64
        channels = model.config["in_channels"]
        assert model(torch.rand(1, channels, info_size, info_size)).shape == (1, len(model.class_names), 64, 64)


def test_torch_hub_loads_shipped_and_untrained_models_from_a_clone():
    model = torch.hub.load(str(REPO), "nwm", source="local", dataset="polygons", pretrained=True)
    assert not model.training and model.class_names[1] == "triangle"
    assert model.config["run_name"] == "polygons/nwm-linear-T100-h16-seed0"
    unet = torch.hub.load(str(REPO), "unet", source="local", dataset="multi_mnist", width=3)
    assert sum(p.numel() for p in unet.parameters()) == 68_834 and unet.class_names[10] == "9"
    with pytest.raises(ValueError, match="no trained unet on multi_mnist is shipped"):
        torch.hub.load(str(REPO), "unet", source="local", dataset="multi_mnist", pretrained=True)
    with pytest.raises(ValueError, match="cannot change"):
        torch.hub.load(str(REPO), "nwm", source="local", dataset="polygons", pretrained=True, T=50)
