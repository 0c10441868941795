"""CPU installs: torchvision imports beside CPU torch through the startup hook, in any new process."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from covr_ray.compat import cpu_install


def _cpu_install_active() -> bool:
    return (cpu_install.site_packages() / cpu_install.PTH_NAME).is_file()


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision not installed")
def test_torchvision_and_qwen_image_processor_import_in_a_fresh_process():
    code = ("import torchvision, torchvision.transforms.v2.functional as F\n"
            "from transformers import Qwen2VLImageProcessor\n"
            "import _covr_torchvision_cpu_hook as h\n"
            "print(h.state)\n")
    if not _cpu_install_active():
        pytest.skip("not a CPU install (the hook is only installed on machines without an NVIDIA GPU)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # either torchvision's own library loaded, or exactly the two schemas were defined
    assert proc.stdout.strip() in ("native", "schemas")


def test_hook_does_nothing_until_torchvision_is_imported():
    if not _cpu_install_active():
        pytest.skip("not a CPU install")
    code = "import sys, _covr_torchvision_cpu_hook as h; print(h.state, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["waiting", "False"]


def test_unused_cuda_companions_are_absent_on_cpu_installs():
    if not _cpu_install_active():
        pytest.skip("not a CPU install")
    for name in ("torchaudio", "torchcodec"):
        assert importlib.util.find_spec(name) is None
