"""``python -m fbanet.cli.devices``: report the compute devices as one JSON event, and exit.

A GUI must not ask torch about GPUs in its own process: ``torch.cuda.get_device_name``
creates a CUDA context that holds GPU memory until the program ends. The panels run this
short worker instead (:class:`DeviceProbe`) and show :func:`describe_devices` of its event.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from fbanet.cli.jobs import WorkerJob
from fbanet.protocol import Event, ExitCode, error_line, event_kind, make_event

MODULE = "fbanet.cli.devices"


def find_devices() -> dict[str, Any]:
    """The DEVICES event: the torch version and each CUDA GPU (or Apple MPS) found."""
    import torch

    devices = [
        {"kind": "cuda", "index": index, "name": torch.cuda.get_device_name(index)}
        for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    ]
    mps = getattr(torch.backends, "mps", None)
    if not devices and mps is not None and mps.is_available():
        devices.append({"kind": "mps", "index": 0, "name": "Apple Metal (MPS)"})
    return make_event(Event.DEVICES, torch=torch.__version__, devices=devices)


def describe_devices(event: Mapping[str, Any]) -> str:
    """One line for a panel: the GPU that "auto" uses, or that it runs on the CPU."""
    devices = list(event.get("devices") or [])
    torch = event.get("torch", "?")
    if not devices:
        return f"No GPU found: FBANet runs on the CPU (PyTorch {torch})."
    more = f" (+{len(devices) - 1} more)" if len(devices) > 1 else ""
    return f"GPU: {devices[0]['name']}{more}, PyTorch {torch}"


class DeviceProbe(WorkerJob):
    """This module in a background worker; :attr:`description` once it has answered."""

    def __init__(self, python: str | None = None) -> None:
        super().__init__([], python, module=MODULE)
        self.description = "Looking for GPUs..."

    def handle_event(self, event: dict[str, Any]) -> None:
        if event_kind(event) is Event.DEVICES:
            self.description = describe_devices(event)

    def finish(self, returncode: int) -> None:
        super().finish(returncode)
        if self.error_message:
            self.description = f"PyTorch cannot be loaded ({self.error_message})."


def main() -> int:
    """Print the DEVICES event; exit 1 with an error line when torch cannot be loaded."""
    try:
        event = find_devices()
    except Exception as error:  # a broken torch raises anything from OSError to ImportError
        print(error_line("devices", error), file=sys.stderr)
        return ExitCode.ERROR
    print(json.dumps(event), flush=True)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
