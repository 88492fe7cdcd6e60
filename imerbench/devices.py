"""Devices: which one a run uses, how workers share a GPU, and how a device is named in rows."""

from __future__ import annotations

import platform

import torch

from imerbench.errors import ImerbenchError

# Automatic --jobs-per-device: concurrent cells per GPU. On one H200, 8 concurrent comp-ref
# cells gave 2.25x the cells per hour of one at a time; 4 is the cautious default, leaving
# each cell a quarter of the device's memory (real widths, large batches).
JOBS_PER_DEVICE = 4


CONTEXT_RESERVE = 0.1  # share of a shared GPU's memory left outside the workers' allocators


def device_count() -> int:
    return torch.cuda.device_count()


def assign_devices(workers: int, devices: list[int]) -> list[int]:
    """Worker k runs on devices[k % len(devices)], so every device gets its share."""
    if not devices:
        raise ValueError("no device to assign workers to")
    return [devices[k % len(devices)] for k in range(workers)]


def memory_fraction(workers_on_device: int) -> float:
    """Each worker's share of its GPU's memory for the caching allocator. The CUDA
    contexts (a few hundred MB per process) live outside the allocator, so the shares
    leave a tenth of the device to them."""
    return (1.0 - CONTEXT_RESERVE) / max(workers_on_device, 1)


def limit_device_memory(device: torch.device, workers_on_device: int) -> None:
    """Cap this process's allocator on `device` when several workers share it: one cell that
    grows too much then fails on its own (out of memory) rather than starving the others."""
    if device.type == "cuda" and workers_on_device > 1:
        torch.cuda.set_per_process_memory_fraction(memory_fraction(workers_on_device), device)


def resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ImerbenchError(f"device '{text}' is not valid; use auto, cpu or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ImerbenchError(f"device '{text}' asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ImerbenchError(
                f"device '{text}': only {torch.cuda.device_count()} CUDA device(s) here"
            )
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
