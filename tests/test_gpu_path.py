"""The CUDA path on the CPU: what needs a GPU (streams, device queries, compilation) is replaced by
fakes, so each rule of the GPU path is checked on every machine. tests/test_cuda.py runs the
real thing where a GPU is present. Rules 2 and 7 (graph capture) are checked in
tests/test_cuda_graphs.py, rule 10 (bfloat16 detection) in tests/test_settings.py."""
import json
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

import engine
import runs
import settings
from conftest import tiny_batch, tiny_model
from models import build_model, common, convlstm_fused


# 1. resume: the generator state is read onto the CPU (Generator.set_state refuses a CUDA tensor)
def test_resume_reads_the_run_state_onto_the_cpu(run_train, tmp_path, monkeypatch):
    run_train(tmp_path, "--epochs", "1", "--run-name", "r")
    real_load, places = torch.load, []

    def load(path, *args, map_location=None, **kwargs):
        if str(path).endswith(runs.LAST):
            places.append(map_location)
        return real_load(path, *args, map_location=map_location, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    run_train(tmp_path, "--epochs", "2", "--run-name", "r")
    assert places and set(places) == {"cpu"}  # whatever the run's device: the model and optimizer copy to it


# 3. resume keeps the capturable flag this run's optimizer was built with
def test_resume_keeps_the_capturable_flag_of_this_run(run_train, tmp_path):
    run_train(tmp_path, "--epochs", "1", "--run-name", "r")
    last = torch.load(tmp_path / "r" / runs.LAST, weights_only=True)
    for group in last["optimizer"]["param_groups"]:
        group["capturable"] = True  # as a run saved by a CUDA-graphed run
    torch.save(last, tmp_path / "r" / runs.LAST)
    result = run_train(tmp_path, "--epochs", "2", "--run-name", "r")  # on the CPU: not capturable
    assert result["epochs_run"] == 2


# 4. --device cuda:N makes GPU N the current device before anything is allocated on it
def test_a_named_gpu_becomes_the_current_device(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert settings.pick_device("cuda:1") == torch.device("cuda:1") and current == [torch.device("cuda:1")]
    assert settings.pick_device("cuda") == torch.device("cuda") and len(current) == 1  # stays the current one
    with pytest.raises(ValueError, match="cuda:0 .. cuda:1"):
        settings.pick_device("cuda:2")


# 5. the CPU tests name their device: on a machine with a GPU, "auto" would train them there
def test_cpu_tests_refuse_the_automatic_device():
    with pytest.raises(AssertionError, match="--device cpu"):
        settings.pick_device("auto")


# 6. and 11. float32 means float32 (no TF32), cudnn.benchmark for CUDA's fixed shapes; both recorded
@pytest.fixture
def backends():
    """Puts the global backend flags back after the test."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = flags


def test_runs_turn_tf32_off_and_record_precision(run_train, tmp_path, backends):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    run_train(tmp_path, "--epochs", "1", "--run-name", "r")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    config = json.loads((tmp_path / "r" / runs.CONFIG).read_text())
    assert config["tf32"] is False and config["precision"] == "float32" and config["cuda_graph"] == "off"


def test_cuda_backends_benchmark_convolutions(backends):
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = False, True
    engine.set_backends(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32


def test_segmented_backprop_saves_no_rng_state(monkeypatch):
    # stashing the RNG state is refused inside a CUDA-graph capture (torch < 2.10); the models draw no random numbers
    def refused():
        raise RuntimeError("RNG state read during capture")

    monkeypatch.setattr(torch, "get_rng_state", refused)
    model = build_model("lstm", in_channels=3, num_classes=3, T=6, c_mid=4, readout_width=8, bptt_segment=2)
    x, y = tiny_batch()
    F.cross_entropy(model(x), y).backward()


# 8. --compile compiles parts that the NWM's forward pass runs
@pytest.mark.parametrize("name", ["nwm", "lstm"])
def test_compile_reaches_what_the_forward_pass_runs(monkeypatch, name):
    ran = []

    def fake_compile(fn, **kwargs):
        def compiled(*args, **kw):
            ran.append(fn)
            return fn(*args, **kw)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = engine.maybe_compile(tiny_model(name), "on", torch.device("cpu"))
    model(tiny_batch()[0])
    # the head's compiled entry ran, whether it takes the features or (the tiny NWM) a folded readout's product
    assert any(getattr(fn, "__self__", None) is model.readout.head for fn in ran)
    assert set(model.state_dict()) == set(tiny_model(name).state_dict())  # checkpoints keep their keys
    engine.uncompile(model)
    assert not set(engine.HEAD_ENTRY_POINTS) & set(vars(model.readout.head))


# 9. the ConvLSTM's step is compiled once, not once per input layout
def test_conv_lstm_step_compiles_once(monkeypatch):
    monkeypatch.setattr(convlstm_fused, "kernel", lambda u: None)  # the step-by-step path, as on a GPU
    model = build_model("lstm", in_channels=3, num_classes=3, T=5, c_mid=4, readout_width=8)
    counter = CompileCounter()
    model.step = torch.compile(model.step, backend=counter, dynamic=False)
    model(tiny_batch()[0]).sum().backward()
    assert counter.frame_count == 1


# 11. the automatic BPTT segment on CUDA: the whole sequence where it fits in the GPU's memory
def test_automatic_segment_is_sized_for_gpu_memory(monkeypatch):
    multi_mnist = dict(recurrent=True, batch_size=64, T=100, hidden_channels=16, image_size=(128, 128))
    cpu = torch.device("cpu")
    assert common.auto_bptt_segment(**multi_mnist, device=cpu) == common.AUTO_SEGMENT
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: mock.Mock(total_memory=141 * 2**30))
    gpu = common.auto_bptt_segment(**multi_mnist, device=torch.device("cuda"))
    assert common.AUTO_SEGMENT < gpu < 100
    tetrominoes = dict(multi_mnist, batch_size=256, hidden_channels=2, image_size=(64, 64))
    assert common.auto_bptt_segment(**tetrominoes, device=cpu) == common.AUTO_SEGMENT
    assert common.auto_bptt_segment(**tetrominoes, device=torch.device("cuda")) == 0  # fits: store every step
