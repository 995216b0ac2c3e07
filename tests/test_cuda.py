"""CUDA only (skipped without a GPU): the models run there, the CUDA-graphed training step and
evaluation compute exactly what the eager ones compute, float32 is float32 (no TF32), and a run
paused or killed on the GPU resumes to the metrics of an uninterrupted one. scripts/gpu_check.sh runs
them on a GPU machine; tests/test_gpu_path.py checks the GPU path's rules on any machine."""
import copy
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import runs
import train
from configs import model_config
from cuda_graphs import GraphedForward, GraphedTrainStep
from data_scripts import create_tetrominoes
from engine import TrainStep, evaluate, set_backends
from models import MODEL_NAMES, build_model

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def model_and_optimizer(name, capturable):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=4, T=10, c_mid=8, readout_width=16, depth=3,
                        width=2).cuda()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, capturable=capturable)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_graphed_and_eager_training_agree_over_three_steps(name):
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.rand(4, 3, 16, 16, generator=generator).cuda(),
                torch.randint(0, 4, (4, 16, 16), generator=generator).cuda()) for _ in range(3)]
    results = []
    for graphed in (False, True):
        model, optimizer = model_and_optimizer(name, capturable=graphed)
        step = GraphedTrainStep(model, optimizer, False, *batches[0]) if graphed else TrainStep(model, optimizer, False)
        losses = [step(x, y)[1].item() for x, y in batches]
        grads = [p.grad.detach().clone() for p in model.parameters()]
        results.append((losses, grads, [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_grads, eager_params), (graph_losses, graph_grads, graph_params) = results
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(eager_grads + eager_params, graph_grads + graph_params):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["nwm", "unet"])
def test_graphed_evaluation_gives_the_eager_metrics(name):
    model, _ = model_and_optimizer(name, capturable=False)
    images, masks = torch.rand(10, 3, 16, 16).cuda(), torch.randint(0, 4, (10, 16, 16)).cuda()
    graphed = GraphedForward(model.eval(), False, images[:4])
    eager = evaluate(model, images, masks, 4, batch_size=4)
    replayed = evaluate(model, images, masks, 4, batch_size=4, graphed=graphed)  # 4 + 4 graphed, 2 eager
    for key in ("acc", "loss", "iou_foreground", "miou"):
        assert replayed[key] == pytest.approx(eager[key], rel=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_run_on_cuda(name):
    model = build_model(name, in_channels=1, num_classes=3, T=6).cuda()
    assert model(torch.rand(2, 1, 16, 16, device="cuda")).shape == (2, 3, 16, 16)


def metrics_without_seconds(run_dir):
    with open(run_dir / runs.METRICS) as f:
        return [{k: float(v) for k, v in row.items() if k not in ("seconds", "device_name", "precision")}
                for row in csv.DictReader(f)]


def test_killed_run_resumes_on_cuda_to_the_uninterrupted_metrics(tiny_dataset, tmp_path, monkeypatch):
    argv = ["--dataset", "tiny", "--device", "cuda", "--data-root", str(tiny_dataset), "--T", "8", "--c-mid", "8",
            "--readout-width", "16", "--batch-size", "16", "--epochs", "3", "--min-epochs", "0", "--amp", "off",
            "--cuda-graph", "on", "--compile", "off", "--no-progress", "--run-name", "r"]
    reference = train.main(argv + ["--runs-root", str(tmp_path / "a")])
    real_epoch, calls = train.train_one_epoch, []

    def killed_in_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(train, "train_one_epoch", killed_in_second_epoch)
    with pytest.raises(SystemExit):
        train.main(argv + ["--runs-root", str(tmp_path / "b")])
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    resumed = train.main(argv + ["--runs-root", str(tmp_path / "b")])
    config = json.loads((tmp_path / "b" / "r" / runs.CONFIG).read_text())
    assert config["cuda_graph"] == "captured" and config["tf32"] is False
    for a, b in zip(metrics_without_seconds(tmp_path / "a" / "r"), metrics_without_seconds(tmp_path / "b" / "r")):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    assert resumed["iou_foreground"] == pytest.approx(reference["iou_foreground"], rel=1e-4, abs=1e-6)


def test_a_run_killed_outright_on_cuda_resumes_to_the_uninterrupted_run(tmp_path):
    """SIGKILL after an epoch (no handler runs): the same command resumes from last.pt to the metrics of
    the run uninterrupted."""
    create_tetrominoes.main(["--data-root", str(tmp_path / "data"), "--train", "48", "--val", "16", "--test", "16"])
    command = [sys.executable, "train.py", "--dataset", "tetrominoes", "--device", "cuda", "--data-root",
               str(tmp_path / "data"), "--T", "8", "--c-mid", "8", "--readout-width", "16", "--batch-size", "2",
               "--epochs", "3", "--min-epochs", "0", "--amp", "off", "--compile", "off", "--no-progress",
               "--run-name", "r"]
    subprocess.run(command + ["--runs-root", str(tmp_path / "a")], cwd=REPO, check=True)
    killed = subprocess.Popen(command + ["--runs-root", str(tmp_path / "b")], cwd=REPO)
    while not runs.load_metrics(tmp_path / "b" / "r"):
        assert killed.poll() is None, "the run ended before its first epoch was written"
        time.sleep(0.01)
    killed.kill()
    assert killed.wait() == -9, "the run ended before it could be killed"
    subprocess.run(command + ["--runs-root", str(tmp_path / "b")], cwd=REPO, check=True)
    for a, b in zip(metrics_without_seconds(tmp_path / "a" / "r"), metrics_without_seconds(tmp_path / "b" / "r"),
                    strict=True):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    tested = [{k: v for k, v in json.loads((tmp_path / run / "r" / runs.TEST_METRICS).read_text()).items()
               if isinstance(v, float)} for run in "ab"]
    assert tested[0] and tested[1] == pytest.approx(tested[0], rel=1e-4, abs=1e-6)


def test_float32_training_on_cuda_is_float32_with_tf32_off():
    """One training step of the Tetrominoes NWM in float32 with the backends train.py sets (engine.set_backends:
    TF32 off) against float64: logits and weight gradients to float32's precision (on a CPU: 2e-7 and 8e-6).
    Prints the errors with TF32 on too, for scripts/gpu_check.sh's log."""
    config = model_config("tetrominoes", "nwm")
    torch.manual_seed(0)
    reference = build_model("nwm", **config).cuda().double()
    x = torch.rand(16, 3, 64, 64, device="cuda", dtype=torch.float64)
    y = torch.randint(0, config["num_classes"], (16, 64, 64), device="cuda")

    def errors(model, dtype):
        model.zero_grad(set_to_none=True)
        logits = model(x.to(dtype))
        F.cross_entropy(logits.double(), y).backward()
        return logits.detach().double(), [p.grad.double() for p in model.parameters()]

    def relative(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()

    logits64, grads64 = errors(reference, torch.float64)
    found = {}
    try:
        for tf32 in (True, False):
            set_backends("cuda")
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            logits, grads = errors(copy.deepcopy(reference).float(), torch.float32)
            found[tf32] = relative(logits, logits64), max(map(relative, grads, grads64))
            print(f"TF32 {'on' if tf32 else 'off'}: logits {found[tf32][0]:.1e}, weight gradients {found[tf32][1]:.1e} "
                  f"({torch.cuda.get_device_name()}, torch {torch.__version__})")
    finally:
        set_backends("cuda")
    assert found[False][0] < 1e-5 and found[False][1] < 1e-4
