"""settings.py's machine questions: what computes bfloat16 fast, the CPU allocator setting, how many threads.
(Paths and devices: tests/test_reliability.py, tests/test_gpu_path.py.)"""
import platform

import pytest
import torch

import settings


# GPU path rule 10: --amp auto uses bfloat16 only where the GPU computes it natively
def test_emulated_bfloat16_is_not_used(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert not settings.bf16_supported(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert settings.bf16_supported(torch.device("cuda"))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
def test_the_cpu_allocator_is_tuned_on_glibc():
    assert settings.tune_cpu_allocator()  # train.py applies it by default (--cpu-allocator tuned), tests included


def test_threads_are_capped_at_the_cores_this_process_may_use(monkeypatch, capsys):
    before = torch.get_num_threads()
    monkeypatch.setattr(settings, "available_cores", lambda: 2)
    try:
        assert settings.set_threads(9999) == 2 and torch.get_num_threads() == 2
        assert "warning: --threads 9999: this process may use 2 core(s), so it uses 2 threads" in capsys.readouterr().err
        assert settings.set_threads(1) == 1 and settings.set_threads() == 2
        assert capsys.readouterr().err == ""
    finally:
        torch.set_num_threads(before)
