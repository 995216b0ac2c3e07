"""settings.py's machine questions: what computes bfloat16 fast, and the CPU allocator setting.
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
