"""What the device can do: the peak FLOP/s an MFU figure is measured against (one owner for the trainer's log and
the preflight)."""

from __future__ import annotations

import time

import torch

# bf16 dense peak FLOP/s, for the MFU estimate (matched against torch.cuda.get_device_name()).
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A6000": 155e12, "L4": 121e12,
                  "A10": 125e12, "4090": 165e12, "3090": 71e12, "V100": 125e12}


def measured_matmul_flops(dtype: torch.dtype, device: torch.device | str = "cpu", size: int = 1024,
                          reps: int = 8) -> float:
    """FLOP/s a large square matmul reaches in ``dtype``: the practical ceiling where no datasheet figure applies."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b  # warm-up (kernel selection, caches)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * size**3 * reps / (time.perf_counter() - start)


def peak_flops(device: torch.device, bf16: bool, configured: float | None = None) -> float | None:
    """The peak an MFU is taken against: ``configured`` if set, the datasheet figure of a known GPU, None for an
    unknown GPU, and on a CPU the measured matmul ceiling in the training dtype."""
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((flops for key, flops in GPU_PEAK_FLOPS.items() if key in name), None)
    return measured_matmul_flops(torch.bfloat16 if bf16 else torch.float32)
