"""Which devices a pool runs on, checked, and how its workers are described and share the CPU."""

import torch

from fastbert.engine.runtime import check_device


def parse_devices(devices):
    """A non-empty list of 'cpu', 'cuda' or 'cuda:N' (strings or torch.device) -> [torch.device].
    The same device may repeat: two workers on one GPU overlap one's tokenization with the other's model."""
    if isinstance(devices, (str, torch.device)):
        raise TypeError(f"devices must be a list of devices such as ['cuda:0', 'cuda:1'], got the single "
                        f"device {str(devices)!r}: use device= for one device, or devices=[{str(devices)!r}]")
    if not isinstance(devices, (list, tuple)):
        raise TypeError(f"devices must be a list of devices such as ['cuda:0', 'cuda:1'], got {type(devices).__name__}")
    if not devices:
        raise ValueError("devices is empty: name at least one device, such as ['cuda:0']")
    return [check_device(device, f"devices[{position}]") for position, device in enumerate(devices)]


def describe_runtimes(runtimes):
    """Workers' (device, backend, dtype) in one line, each thing said once: 'cpu x2, torch, float32',
    'cuda:0+cuda:1, triton, float16'; workers of different backends or dtypes in groups,
    'cuda:0, triton, float16 / cpu, torch, float32'."""
    groups = {}  # (backend, dtype) -> {device: workers}, in the workers' order
    for device, backend, dtype in runtimes:
        devices = groups.setdefault((backend, dtype), {})
        devices[device] = devices.get(device, 0) + 1
    return " / ".join(
        "+".join(device if count == 1 else f"{device} x{count}" for device, count in devices.items())
        + f", {backend}, {dtype}" for (backend, dtype), devices in groups.items())


def cpu_threads(devices):
    """Torch threads for each CPU worker: the parent's threads shared out, so workers do not oversubscribe."""
    cpu_workers = sum(device.type == "cpu" for device in devices)
    return max(1, torch.get_num_threads() // max(1, cpu_workers))
