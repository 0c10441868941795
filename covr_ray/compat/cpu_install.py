"""Install step for CPU machines: make PyPI's CUDA-built torch companions harmless beside CPU torch.

Run by ``make`` on machines without an NVIDIA GPU, after ``pip install``::

    python -m covr_ray.compat.cpu_install          # install the torchvision hook, drop torchaudio/torchcodec
    python -m covr_ray.compat.cpu_install --check  # exit 1 unless torchvision imports

- torchaudio and torchcodec: nothing in COVR uses them, and their native libraries fail to load against
  CPU torch, so they are uninstalled (transformers then sees them as absent instead of broken).
- torchvision: the Qwen2-VL image processors need it importable. The hook module
  ``_torchvision_cpu_hook.py`` is copied into site-packages with a one-line ``.pth`` that registers it;
  it acts only when ``torchvision`` is imported and only if torchvision's native library fails to load
  (see its docstring). GPU installs never run this step.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HOOK_NAME = "_covr_torchvision_cpu_hook"
PTH_NAME = "covr-torchvision-cpu.pth"
_UNUSED_CUDA_COMPANIONS = ("torchaudio", "torchcodec")


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def install_hook(site: Path | None = None) -> Path:
    """Copy the hook module into ``site`` and write its ``.pth``; returns the ``.pth`` path."""
    site = site or site_packages()
    src = Path(__file__).with_name("_torchvision_cpu_hook.py")
    shutil.copyfile(src, site / f"{HOOK_NAME}.py")
    pth = site / PTH_NAME
    pth.write_text(f"import {HOOK_NAME}; {HOOK_NAME}.install_finder()\n")
    return pth


def uninstall_hook(site: Path | None = None) -> None:
    site = site or site_packages()
    for path in (site / PTH_NAME, site / f"{HOOK_NAME}.py"):
        path.unlink(missing_ok=True)


def drop_unused_companions() -> list[str]:
    """pip-uninstall torchaudio/torchcodec if present; returns what was removed."""
    from importlib.metadata import PackageNotFoundError, distribution

    present = []
    for name in _UNUSED_CUDA_COMPANIONS:
        try:
            distribution(name)
            present.append(name)
        except PackageNotFoundError:
            continue
    if present:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *present], check=True)
    return present


def check() -> bool:
    """True if ``import torchvision`` and its transforms work in a fresh interpreter."""
    code = "import torchvision, torchvision.transforms.v2.functional as F; print(torchvision.__version__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    return proc.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that torchvision imports")
    parser.add_argument("--uninstall", action="store_true", help="remove the hook")
    args = parser.parse_args()
    if args.uninstall:
        uninstall_hook()
        return 0
    if not args.check:
        removed = drop_unused_companions()
        pth = install_hook()
        print(f"cpu_install: hook at {pth}; removed {', '.join(removed) or 'nothing'}")
    ok = check()
    print(f"cpu_install: torchvision imports: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
