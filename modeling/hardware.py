"""What the device can do: the peak FLOP/s an MFU figure is measured against (one owner for the trainer's log and
the preflight), and the fast paths a built run takes, as configured."""

from __future__ import annotations

import time

import torch

from modeling.optimizer import fused_adamw

# bf16 dense (no sparsity) tensor-core peak FLOP/s from the datasheets, for MFU. Matched as substrings of
# torch.cuda.get_device_name() in this order, most specific first: "A10" is also in "A100" and "A10G", "L4" in
# "L40S", "H100" in "H100 NVL"; the SXM parts report no "SXM" ("NVIDIA H100 80GB HBM3"), so they come last.
GPU_PEAKS: tuple[tuple[tuple[str, ...], str, float], ...] = (
    (("GB200",), "GB200", 2500e12),
    (("B200",), "B200", 2250e12),
    (("GH200",), "GH200", 989e12),
    (("H200 NVL",), "H200 NVL", 836e12),
    (("H200",), "H200 SXM", 989e12),
    (("H100 NVL",), "H100 NVL", 835e12),
    (("H100 PCIe", "H100-PCIE"), "H100 PCIe", 756e12),
    (("H100",), "H100 SXM", 989e12),
    (("H800",), "H800", 989e12),
    (("A100-SXM4-80GB", "A100 80GB", "A100-SXM-80GB"), "A100 80GB", 312e12),
    (("A100",), "A100 40GB", 312e12),
    (("A800",), "A800", 312e12),
    (("L40S",), "L40S", 362e12),
    (("L40",), "L40", 181e12),
    (("L4",), "L4", 121e12),
    (("A10G",), "A10G", 70e12),
    (("A10",), "A10", 125e12),
    (("RTX 6000 Ada",), "RTX 6000 Ada", 364e12),
    (("A6000",), "RTX A6000", 155e12),
    (("5090",), "RTX 5090", 210e12),
    (("4090",), "RTX 4090", 165e12),
    (("3090",), "RTX 3090", 71e12),
    (("V100",), "V100 (fp16)", 125e12),
    (("T4",), "T4 (fp16)", 65e12),
)
GPU_PEAK_FLOPS = {label: flops for _, label, flops in GPU_PEAKS}  # label -> peak, for lookups and docs


def datasheet_peak(device_name: str) -> tuple[str, float] | None:
    """(label, bf16 dense peak FLOP/s) of the first table row whose pattern ``device_name`` contains, or None."""
    for patterns, label, flops in GPU_PEAKS:
        if any(p in device_name for p in patterns):
            return label, flops
    return None


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


def peak_flops_source(device: torch.device, bf16: bool, configured: float | None = None) -> tuple[float, str]:
    """The peak an MFU is taken against and where it comes from: ``configured`` if set, the datasheet figure of a
    known GPU, else (an unknown GPU, a CPU) the measured matmul ceiling in the training dtype, labelled measured."""
    if configured:
        return configured, "configured (--peak_flops)"
    dtype = torch.bfloat16 if bf16 else torch.float32
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = datasheet_peak(name)
        if known:
            return known[1], f"{known[0]} datasheet, bf16 dense"
        return measured_matmul_flops(dtype, device, size=4096), f"measured {dtype} matmul on {name} (unknown GPU)"
    return measured_matmul_flops(dtype), f"measured {str(dtype).removeprefix('torch.')} matmul on the CPU"


def peak_flops(device: torch.device, bf16: bool, configured: float | None = None) -> float:
    """The figure of ``peak_flops_source`` (the trainer's MFU)."""
    return peak_flops_source(device, bf16, configured)[0]


def fast_path_summary(run) -> str:
    """One line, from the built run alone (no steps): what the preflight would check, as configured."""
    config, device = run.config, run.device
    attention = run.model.config._attn_implementation
    kernels = ""
    if device.type == "cuda":
        kernels = (f" (flash {'on' if torch.backends.cuda.flash_sdp_enabled() else 'off'}, mem-efficient "
                   f"{'on' if torch.backends.cuda.mem_efficient_sdp_enabled() else 'off'})")
    world, accum = run.accelerator.num_processes, run.accelerator.gradient_accumulation_steps
    reduce = ("1 process" if world == 1 else
              f"once per step (no_sync on {accum - 1} of {accum} micro-batches)" if accum > 1 else "once per step")
    return (f"fast paths: attention {attention}{kernels} | fused AdamW {'yes' if fused_adamw(run.optimizer) else 'no'}"
            f" | bf16 autocast {'yes' if run.accelerator.mixed_precision == 'bf16' else 'no'}"
            f" | compile {('regional' if config.compile_regional else 'yes') if config.compile else 'no'}"
            f" | gradient all-reduce {reduce}"
            " (--preflight shows what actually ran)")
