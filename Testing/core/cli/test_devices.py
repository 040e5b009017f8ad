"""The device probe: GPUs are found in a short worker, never in the host's own process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from fbanet.cli.devices import describe_devices
from fbanet.protocol import Event, make_event


def test_devices_are_found_in_a_worker_and_the_host_never_imports_torch() -> None:
    script = textwrap.dedent(
        """
        import sys
        from fbanet.cli.devices import DeviceProbe
        probe = DeviceProbe()
        probe.start()
        state = probe.wait(timeout=120)
        assert "torch" not in sys.modules, "the host imported torch (a CUDA context)"
        print(state.value, probe.description, sep="|")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr
    state, description = result.stdout.strip().split("|")
    assert state == "succeeded"
    import torch

    if torch.cuda.is_available():
        assert description.startswith(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        assert description.startswith("No GPU found") or "MPS" in description
    assert torch.__version__ in description


def test_descriptions() -> None:
    two = make_event(Event.DEVICES, torch="2.13.0", devices=[
        {"kind": "cuda", "index": 0, "name": "H200"}, {"kind": "cuda", "index": 1, "name": "H200"},
    ])  # fmt: skip
    assert describe_devices(two) == "GPU: H200 (+1 more), PyTorch 2.13.0"
    none = make_event(Event.DEVICES, torch="2.13.0", devices=[])
    assert describe_devices(none) == "No GPU found: FBANet runs on the CPU (PyTorch 2.13.0)."
