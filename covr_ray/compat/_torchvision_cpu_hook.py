"""Startup hook (installed as a ``.pth`` on CPU machines only) letting PyPI's torchvision import on CPU torch.

PyPI's torchvision wheels are CUDA builds: their native library ``torchvision/_C.so`` cannot load
against the CPU build of torch. torchvision survives that, except that at import it registers fake
(meta) kernels for ``torchvision::nms`` and ``torchvision::qnms``, which requires those operators' schemas
to exist - and only the native library defines them. This hook waits until ``torchvision`` is first
imported (it costs nothing before), then:

1. tries to load torchvision's native library itself; if that works (a matching CPU build), it does
   nothing more;
2. otherwise defines exactly those two schemas, with torchvision's signatures, and no kernels. Calling
   ``torchvision.ops.nms`` then raises "no kernel" (it never worked in this install anyway); everything
   else torchvision offers in pure Python (transforms, which the Qwen2-VL image processors use) works.

It is a standalone module (no project imports) because a ``.pth`` runs it in every Python process of the
venv, including the ones vLLM and Ray spawn. Set ``COVR_NO_TORCHVISION_HOOK=1`` to switch it off.
"""

import importlib.abc
import importlib.machinery
import os
import sys
import warnings

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the torch.library.Library alive for the process lifetime
state = "waiting"  # waiting | native | schemas | skipped | failed: <reason>


def _native_library_loads(package_dir):
    import glob

    import torch

    for path in sorted(glob.glob(os.path.join(package_dir, "_C*.so"))):
        try:
            torch.ops.load_library(path)
            return True
        except (OSError, RuntimeError):
            return False
    return False


def prepare():
    """Make ``import torchvision`` work; returns the resulting state string."""
    global _library, state
    spec = importlib.machinery.PathFinder.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        state = "skipped"
        return state
    if _native_library_loads(list(spec.submodule_search_locations)[0]):
        state = "native"
        return state
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        if not hasattr(torch.ops.torchvision, schema.split("(", 1)[0]):
            lib.define(schema)
    _library = lib
    state = "schemas"
    return state


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        global state
        try:
            prepare()
        except Exception as exc:  # noqa: BLE001 - a startup hook must never break the interpreter
            state = f"failed: {exc!r}"
            warnings.warn(f"covr torchvision CPU hook failed ({exc!r}); torchvision may not import",
                          RuntimeWarning, stacklevel=2)
        return None  # the regular finders import torchvision itself


def install_finder():
    """Called from the ``.pth`` line: register the one-shot finder (no torch import here)."""
    if os.environ.get("COVR_NO_TORCHVISION_HOOK") == "1" or "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())
