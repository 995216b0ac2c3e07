"""Using trained models: predict.py on a user's own image files, pretrained.load and torch.hub."""
import errno
import io
import json
import os
import signal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import plotting
import predict
import pretrained
import runs
import train
from conftest import REPO
from models import CONFIG_KEYS


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


def test_the_sheet_shows_every_image_above_its_mask_and_overwrites_no_input(tiny_run, tmp_path, capsys,
                                                                           monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    squares_image().save(out / "sheet.png")  # an input where the sheet would go
    squares_image(size=24).save(tmp_path / "large.png")
    drawn = []
    real_grid = plotting.sample_grid
    monkeypatch.setattr(plotting, "sample_grid", lambda *a, **k: drawn.append((a, k)) or real_grid(*a, **k))
    predict_cpu([str(out / "sheet.png"), str(tmp_path / "large.png"), "--model", str(tiny_run), "--out", str(out),
                 "--resize", "--sheet", "--save-ids"])
    assert np.array_equal(np.asarray(Image.open(out / "sheet.png")), np.asarray(squares_image()))  # untouched
    assert (out / "sheet-2.png").is_file() and "-> " + str(out / "sheet-2.png") in capsys.readouterr().out
    (images, masks, class_names, n, columns, titles), _ = drawn[0]
    assert titles == ("sheet.png", "large.png") and (n, columns) == (2, 2)
    # each image at its own size beside the mask predict.py wrote for it
    assert [tuple(m.shape) for m in masks] == [(16, 16), (24, 24)]
    assert np.array_equal(masks[1].numpy(), np.load(out / "large_classes.npy"))


def test_predict_converts_what_the_model_expects(tiny_run, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    squares_image("L").save(folder / "gray.png")  # a gray image for an RGB model
    alpha = np.asarray(squares_image("RGBA")).copy()
    alpha[..., 3] = np.where(alpha[..., 0] > 0, 255, 0)  # the square on a transparent canvas
    Image.fromarray(alpha).save(folder / "alpha.png")
    squares_image().save(folder / "photo.jpg")
    sixteen = (np.asarray(squares_image("L"), np.uint16) * 257)
    Image.fromarray(sixteen).save(folder / "deep.png")  # 16-bit gray
    (folder / "notes.txt").write_text("not an image")  # folders: only PNG and JPEG files are taken
    (folder / "._gray.png").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata beside a copied file: hidden, skipped
    predict_cpu([str(folder), "--model", str(tiny_run), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "gray copied into 3 channels" in out and "transparency composited onto black" in out
    assert {p.name for p in (tmp_path / "out").glob("*_mask.png")} == \
        {"gray_mask.png", "alpha_mask.png", "photo_mask.png", "deep_mask.png"}
    x16, _ = predict.to_model_input(folder / "deep.png", 3, (16, 16))
    x8, _ = predict.to_model_input(folder / "gray.png", 3, (16, 16))
    torch.testing.assert_close(x16, x8)  # 16-bit values scaled to [0, 1] like 8-bit ones


def test_transparency_becomes_black_as_the_model_sees_it_inverted_or_not(tmp_path):
    dark = np.zeros((16, 16, 2), np.uint8)  # gray and alpha: a dark square drawn on a transparent canvas
    dark[3:9, 4:10] = (30, 255)
    Image.fromarray(dark, "LA").save(tmp_path / "drawn.png")
    x, notes = predict.to_model_input(tmp_path / "drawn.png", 1, (16, 16), invert=True)
    assert x[0, 5, 6] == pytest.approx(1 - 30 / 255) and x[0, 0, 0] == 0  # a bright square on black
    assert "transparency composited onto white (black once inverted)" in notes
    assert not any("converted to gray" in n for n in notes)  # gray with alpha stays gray
    opaque = np.asarray(squares_image("RGBA"))  # alpha 255 everywhere: nothing to composite
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    x, notes = predict.to_model_input(tmp_path / "opaque.png", 3, (16, 16))
    assert not any("transparency" in n for n in notes) and x[0, 5, 6] == pytest.approx(200 / 255)


def test_predict_refuses_what_it_cannot_convert_before_writing(tiny_run, tmp_path, capsys):
    squares_image(size=40).save(tmp_path / "large.png")
    (tmp_path / "fake.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit) as exit_info:
        predict_cpu([str(tmp_path / "large.png"), str(tmp_path / "fake.png"), "--model", str(tiny_run),
                      "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    line = error_line(capsys.readouterr().err)  # one line names every image refused
    assert "large.png: 40x40 pixels, but the model was trained on 16x16 images" in line and "--resize" in line
    assert "fake.png: cannot be read as an image" in line
    assert not (tmp_path / "out").exists()
    predict_cpu([str(tmp_path / "large.png"), "--model", str(tiny_run), "--out", str(tmp_path / "out"), "--resize"])
    assert np.asarray(Image.open(tmp_path / "out" / "large_mask.png")).shape == (40, 40, 3)  # the image's size
    with pytest.raises(SystemExit):
        predict_cpu([str(tmp_path / "large.png"), "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "is not a shipped model" in capsys.readouterr().err


def test_shipped_models_load_in_one_line():
    for name in pretrained.SHIPPED:
        model = pretrained.load(name)
        assert not model.training and model.class_names[0] == "background"
        height, width = model.image_size  # the size it was trained at (its dataset's)
        channels = model.config["in_channels"]
        assert model(torch.rand(1, channels, height, width)).shape == (1, len(model.class_names), height, width)
        # what it is and scores, read from its run directory and the shipped float32 scores, the docs' numbers
        config = runs.load_json(pretrained.REPO / pretrained.SHIPPED[name] / runs.CONFIG)
        scores = pd.read_csv(pretrained.SCORES).set_index("run").loc[config["run_name"]]
        assert scores["evaluated"] == "re-evaluated"  # every shipped run is in scores.csv
        assert f"test fg IoU {scores['iou_foreground']:.4f}" in pretrained.describe(name)
        assert "(float32, results/scores.csv)" in pretrained.describe(name)


def test_a_shipped_name_without_its_files_and_a_run_outside_scores_csv_are_said_so(tmp_path, monkeypatch):
    monkeypatch.setitem(pretrained.SHIPPED, "mnist/nwm", "results/runs/mnist/no-such-run")
    with pytest.raises(ValueError, match="shipped model mnist/nwm: .* has no config.json and checkpoint.pt"):
        pretrained.load("mnist/nwm")
    monkeypatch.setattr(pretrained, "SCORES", tmp_path / "none.csv")  # not scored: the run's own test metrics
    test = runs.load_json(pretrained.REPO / pretrained.SHIPPED["tetrominoes/nwm"] / runs.TEST_METRICS)
    line = pretrained.describe("tetrominoes/nwm")
    assert f"test fg IoU {test['iou_foreground']:.4f}" in line and "(as its run tested it, test_metrics.json)" in line


def test_torch_hub_loads_shipped_and_untrained_models_from_a_clone():
    model = torch.hub.load(str(REPO), "nwm", source="local", dataset="polygons", pretrained=True)
    assert not model.training and model.class_names[1] == "triangle"
    assert model.config["run_name"] == "polygons/nwm-linear-T100-h16-seed0"
    unet = torch.hub.load(str(REPO), "unet", source="local", dataset="multi_mnist", width=3)
    assert sum(p.numel() for p in unet.parameters()) == 68_834 and unet.class_names[10] == "9"
    shipped = torch.hub.load(str(REPO), "unet", source="local", dataset="multi_mnist", pretrained=True)
    assert shipped.config["width"] == 4 and shipped.config["data"]["paper_identical"]
    with pytest.raises(ValueError, match="no trained cnn on multi_mnist is shipped"):
        torch.hub.load(str(REPO), "cnn", source="local", dataset="multi_mnist", pretrained=True)
    with pytest.raises(ValueError, match="cannot change"):
        torch.hub.load(str(REPO), "nwm", source="local", dataset="polygons", pretrained=True, T=50)


# -----------------------------------------------------------------------------
# faults: every one ends in complete outputs or a one-line refusal before any work, never a traceback


def refusal(capsys, argv):
    """The one-line error of predict.py refusing `argv` with exit 2, after checking that it shows no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict_cpu(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    return error_line(err)


def error_line(err):
    """The refusal's one line (cli.ArgumentParser follows it with a line naming --help)."""
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "--help" in lines[1], err
    return lines[0]


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded although the command should have been refused before any work")


def test_inputs_of_the_same_name_get_outputs_of_their_own(tiny_run, tmp_path, capsys):
    for folder in ("a", "b", "out"):
        (tmp_path / folder).mkdir()
    squares_image().save(tmp_path / "a" / "x.png")
    squares_image("L").save(tmp_path / "b" / "x.png")
    squares_image().save(tmp_path / "a" / "y.png")
    squares_image().save(tmp_path / "a" / "y.jpg")
    squares_image().save(tmp_path / "z.png")
    squares_image("L").save(tmp_path / "out" / "z_mask.png")  # an input where z.png's mask would go
    kept = (tmp_path / "out" / "z_mask.png").read_bytes()
    predict_cpu([str(tmp_path / "a"), str(tmp_path / "b" / "x.png"), str(tmp_path / "a" / "x.png"),
                 str(tmp_path / "z.png"), str(tmp_path / "out" / "z_mask.png"), "--model", str(tiny_run),
                 "--out", str(tmp_path / "out"), "--save-ids"])
    out = capsys.readouterr().out
    assert out.count(" -> ") == 6  # a/x.png named twice is segmented once
    assert {p.name for p in (tmp_path / "out").glob("*_classes.npy")} == \
        {"x_classes.npy", "x-2_classes.npy", "y_classes.npy", "y-2_classes.npy", "z-2_classes.npy",
         "z_mask_classes.npy"}
    assert "b/x.png -> " in out and "written as x-2" in out and "written as z-2" in out
    assert (tmp_path / "out" / "z_mask.png").read_bytes() == kept
    assert not list((tmp_path / "out").glob(".*"))  # no staging folder left behind
    assert predict.output_names([tmp_path / "X.png", tmp_path / "x.png"], tmp_path) == \
        {tmp_path / "X.png": "X", tmp_path / "x.png": "x-2"}  # one file on case-insensitive file systems


def test_files_that_are_not_regular_are_skipped_in_folders_and_refused_when_named(tiny_run, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    squares_image().save(folder / "mine.png")
    os.mkfifo(folder / "pipe.png")  # reading it would wait for a writer forever
    (folder / "sub.png").mkdir()

    def hung(signum, frame):
        raise TimeoutError("predict.py hung on a FIFO")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        predict_cpu([str(folder), "--model", str(tiny_run), "--out", str(tmp_path / "out")])
        captured = capsys.readouterr()
        assert "mine.png -> " in captured.out
        assert "skipped" in captured.err and "pipe.png" in captured.err and "sub.png" in captured.err
        assert "pipe.png: not a regular file" in refusal(capsys, [str(folder / "pipe.png"), "--model", str(tiny_run),
                                                                 "--out", str(tmp_path / "out")])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tiny_run, tmp_path, capsys, monkeypatch):
    squares_image().save(tmp_path / "mine.png")
    (tmp_path / "notes.txt").write_text("a user's file")
    read_only = tmp_path / "mounted"
    read_only.mkdir()
    mkdir = os.mkdir

    def read_only_mkdir(path, *args, **kwargs):  # what a read-only file system answers (root ignores chmod)
        if str(path).startswith(str(read_only)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    monkeypatch.setattr(pretrained, "load", no_model)
    image = str(tmp_path / "mine.png")
    assert "notes.txt is not a folder" in refusal(capsys, [image, "--model", str(tiny_run),
                                                           "--out", str(tmp_path / "notes.txt")])
    assert "notes.txt is not a folder" in refusal(capsys, [image, "--model", str(tiny_run),
                                                           "--out", str(tmp_path / "notes.txt" / "masks")])
    for out in (read_only, read_only / "masks"):
        line = refusal(capsys, [image, "--model", str(tiny_run), "--out", str(out)])
        assert f"cannot write in {read_only}" in line and "Read-only file system" in line
    assert (tmp_path / "notes.txt").read_text() == "a user's file" and not list(read_only.iterdir())


def test_a_disk_that_fills_up_while_writing_keeps_every_earlier_output_whole(tiny_run, tmp_path, capsys, monkeypatch):
    squares_image().save(tmp_path / "mine.png")
    predict_cpu([str(tmp_path / "mine.png"), "--model", str(tiny_run), "--out", str(tmp_path / "out")])
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def full_disk(fig, name, out_dir=None, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / f"{name}.png"))
    monkeypatch.setattr(plotting, "save_figure", full_disk)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict_cpu([str(tmp_path / "mine.png"), "--model", str(tiny_run), "--out", str(tmp_path / "out"),
                     "--invert"])
    err = capsys.readouterr().err
    assert "No space left on device" in exit_info.value.code and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # the old mask, not half a new one


def test_model_takes_any_file_of_a_run(tiny_run, tmp_path):
    squares_image().save(tmp_path / "mine.png")
    for name in (runs.METRICS, runs.CONFIG, runs.TEST_METRICS):  # each names its run
        predict_cpu([str(tmp_path / "mine.png"), "--model", str(tiny_run / name), "--out", str(tmp_path / name)])
        assert (tmp_path / name / "mine_mask.png").is_file()


def test_run_files_that_make_no_model_are_refused_in_one_line(tiny_run, tmp_path, capsys):
    squares_image().save(tmp_path / "mine.png")
    config = json.loads((tiny_run / runs.CONFIG).read_text())
    tensor = io.BytesIO()
    torch.save(torch.zeros(3), tensor)
    damages = {"text": ("checkpoint.pt", b"hello\n"), "csv": ("checkpoint.pt", (tiny_run / runs.METRICS).read_bytes()),
               "tensor": ("checkpoint.pt", tensor.getvalue()),
               "other model": ("config.json", json.dumps(dict(config, model="cnn")).encode()),
               "list": ("config.json", b"[1]\n"),
               # a run from before config.json recorded class names and image size, on a dataset not known here
               "unknown dataset": ("config.json", json.dumps({k: v for k, v in dict(config, dataset="gone").items()
                                                              if k not in ("class_names", "image_size")}).encode())}
    for damage, (name, data) in damages.items():
        damaged = tmp_path / damage
        damaged.mkdir()
        for path in tiny_run.iterdir():
            (damaged / path.name).write_bytes(path.read_bytes())
        (damaged / name).write_bytes(data)
        line = refusal(capsys, [str(tmp_path / "mine.png"), "--model", str(damaged), "--out", str(tmp_path / "o")])
        assert f"{damaged / name}" in line, damage
    assert not (tmp_path / "o").exists()
    if not torch.cuda.is_available():  # a device this PyTorch lacks is not a damaged checkpoint
        with pytest.raises(ValueError, match="sees no CUDA device"):
            pretrained.load(tiny_run, "cuda")


def test_resize_gives_the_mask_and_class_ids_at_the_image_size(tiny_run, tmp_path, capsys):
    squares_image(size=40).crop((0, 0, 40, 24)).save(tmp_path / "wide.png")
    predict_cpu([str(tmp_path / "wide.png"), "--model", str(tiny_run), "--out", str(tmp_path / "out"), "--resize",
                 "--save-ids"])
    assert np.asarray(Image.open(tmp_path / "out" / "wide_mask.png")).shape == (24, 40, 3)
    assert np.load(tmp_path / "out" / "wide_classes.npy").shape == (24, 40)
    assert "scaled from 40x24 to 16x16" in capsys.readouterr().out


def test_photos_are_read_upright_as_their_exif_orientation_says(tmp_path):
    stored = np.zeros((16, 16), np.uint8)
    stored[2:5, 3:12] = 255  # a bar in the top rows: asymmetric, so that any turn shows
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation 6, a camera held sideways: show the image turned 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif)
    x, notes = predict.to_model_input(tmp_path / "photo.png", 1, (16, 16))
    assert np.array_equal(x[0].numpy() * 255, np.rot90(stored, -1)) and "EXIF orientation" in " ".join(notes)


def test_an_animated_image_is_read_at_its_first_frame_and_said_so(tmp_path):
    frames = [Image.fromarray(np.full((16, 16), 40 * (i + 1), np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "moving.png", save_all=True, append_images=frames[1:])  # an animated PNG
    x, notes = predict.to_model_input(tmp_path / "moving.png", 1, (16, 16))
    assert torch.all(x == 40 / 255) and "3 frames (animated or multi-page): only the first is used" in notes


def test_a_broken_png_is_refused_by_name(tmp_path):
    header = b"\x89PNG\r\n\x1a\n" + (5).to_bytes(4, "big") + b"IHDR" + bytes(9)  # PIL raises ValueError, not OSError
    (tmp_path / "broken.png").write_bytes(header)
    with pytest.raises(predict.ImageError, match="broken.png: cannot be read as an image"):
        predict.to_model_input(tmp_path / "broken.png", 1, (16, 16))


def test_hub_keywords_out_of_range_are_refused_with_the_range():
    bad = dict(T=-5, dt=0.0, c_mid=0, hidden_channels=0, readout_width=0, readout_depth=-1, width=0,
               bptt_segment=-1, in_channels=0, num_classes=0, depth=0)
    assert set(bad) | {"readout", "fused"} == set(CONFIG_KEYS)  # a new keyword needs its range here
    for key, value in bad.items():
        model = "unet" if key == "width" else "cnn" if key == "depth" else "nwm"
        with pytest.raises(ValueError, match=f"^{key} must be a"):
            torch.hub.load(str(REPO), model, source="local", **{key: value})
    for key, value in [("T", 2.5), ("T", True), ("dt", float("nan")), ("fused", "yes")]:
        with pytest.raises(ValueError, match=f"^{key} must be"):
            torch.hub.load(str(REPO), "nwm", source="local", **{key: value})


def test_hub_names_the_shipped_models_for_an_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'shapes'.*shipped for tetrominoes/nwm") as info:
        torch.hub.load(str(REPO), "nwm", source="local", dataset="shapes", pretrained=True)
    assert "train.py" not in str(info.value)
    with pytest.raises(ValueError, match="pretrained must be True or False"):
        torch.hub.load(str(REPO), "nwm", source="local", pretrained="no")


def test_sheet_thumbnails_keep_the_shape_and_the_class_ids():
    x = torch.rand(3, 300, 600)
    mask = torch.zeros(300, 600, dtype=torch.long)
    mask[:, 300:] = 2
    small, small_mask = predict.thumbnail(x, mask)
    assert small.shape == (3, 128, 256) and small_mask.shape == (128, 256) and small_mask.dtype == torch.uint8
    assert set(small_mask.unique().tolist()) == {0, 2} and (small_mask[:, :120] == 0).all()
    assert (small_mask[:, 136:] == 2).all()  # nearest: ids are never blended into others
    same, same_mask = predict.thumbnail(x[:, :64, :64], mask[:64, :64])
    assert same.shape == (3, 64, 64) and torch.equal(same_mask, mask[:64, :64].to(torch.uint8))


def test_every_class_gets_its_own_mask_colour_up_to_256_classes():
    assert plotting.class_colours(11)[1:] == list(plt.get_cmap("tab10").colors)  # the paper's datasets: tab10
    for n in (2, 11, 12, 21, 22, 100, 256):  # import_folder.py takes up to 256 classes
        colours = (np.array(plotting.class_colours(n)) * 255).round().astype(np.uint8)
        assert len(colours) == n and len({tuple(c) for c in colours}) == n and not colours[0].any()
