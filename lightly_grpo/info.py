"""What this installation runs on: versions, devices and the kNN search backends.

The compiled kernel of the ``"tiled"`` search backend is optional (a build without a C++
compiler skips it), and ``backend="auto"`` then picks FAISS or torch. :func:`environment_info`
says which backend ``"auto"`` resolves to, whether the kernel is present (and why not), FAISS's
build and torch's devices; ``lightly-grpo info`` prints it (``--json`` for the dict), as does
``python -m lightly_grpo.info``, which needs nothing beyond the index layer.

Nothing here runs a search or calls a FAISS GPU function (those abort the process on a machine
without a usable GPU): FAISS's build is read from which functions it has, its GPU count from
``faiss.get_num_gpus()``.

Examples:
    >>> info = environment_info()
    >>> info["search"]["auto_cpu"] in ("tiled", "faiss", "torch")
    True
    >>> print(format_info(info))  # doctest: +ELLIPSIS
    lightly-grpo ...
    search "auto": ...
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from collections.abc import Sequence
from typing import Any

import torch

import lightly_grpo
from lightly_grpo.index import search, tiled

# Distributions reported under "packages" (their import names differ from some of them).
PACKAGES = (
    "torch",
    "torchvision",
    "lightly",
    "pytorch-lightning",
    "pytorch-metric-learning",
    "numpy",
)


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_info() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda else 0
    get_default = getattr(torch, "get_default_device", None)  # torch >= 2.3
    return {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": cuda,
        "cuda_device_count": count,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(count)],
        "default_device": str(get_default()) if get_default is not None else "cpu",
        "num_threads": torch.get_num_threads(),
    }


def _faiss_info() -> dict[str, Any]:
    faiss = search.faiss
    if faiss is None:
        return {
            "installed": False,
            "version": None,
            "build": None,
            "distributions": [],
            "num_gpus": 0,
        }
    # The GPU classes exist only in a GPU build (the CPU wheels define knn_gpu too, as a stub).
    gpu_build = hasattr(faiss, "StandardGpuResources")
    # faiss-cpu, faiss-gpu, faiss-gpu-cu12, ...: more than one installed is a broken set-up.
    distributions = [
        d.metadata["Name"]
        for d in importlib.metadata.distributions()
        if str(d.metadata["Name"] or "").lower().startswith("faiss")
    ]
    return {
        "installed": True,
        "version": getattr(faiss, "__version__", None),
        "build": "gpu" if gpu_build else "cpu",
        "distributions": sorted(set(distributions)),
        "num_gpus": search.faiss_num_gpus(),
    }


def _kernel_info() -> dict[str, Any]:
    kernel = tiled._kernel
    return {
        "module": tiled.KERNEL_MODULE,
        "available": tiled.tiled_available(),
        "path": getattr(kernel, "__file__", None) if kernel is not None else None,
        "import_error": tiled.kernel_import_error(),
    }


def _search_info() -> dict[str, Any]:
    return {
        "available_backends": search.available_backends(),
        # What backend="auto" runs for CPU data and for CUDA data (a plain choice: no search
        # runs, and the missing-kernel warning is left to the first real search).
        "auto_cpu": search.resolve_backend("auto", "cpu", warn=False),
        "auto_cuda": search.resolve_backend("auto", "cuda", warn=False),
        "faiss_gpu_max_k": search.FAISS_GPU_MAX_K,
    }


def environment_info() -> dict[str, Any]:
    """Versions, devices and search backends of this installation, as a JSON-serialisable dict.

    Returns:
        A dict with ``"lightly_grpo"`` (version), ``"python"``, ``"platform"``, ``"packages"``
        (installed versions of torch, torchvision, lightly, pytorch-lightning,
        pytorch-metric-learning and numpy; None where missing), ``"torch"`` (version, CUDA build,
        ``cuda_available``, ``cuda_device_count``, device names, ``default_device``, threads),
        ``"faiss"`` (``installed``, ``version``, ``build`` ``"cpu"``/``"gpu"``, the installed
        ``distributions``, ``num_gpus``), ``"tiled_kernel"`` (``module``, ``available``,
        ``path``, ``import_error``) and ``"search"`` (``available_backends`` and what
        ``backend="auto"`` resolves to for CPU data, ``auto_cpu``, and for CUDA data,
        ``auto_cuda``).

    Examples:
        >>> import json
        >>> info = environment_info()
        >>> info["tiled_kernel"]["available"] == ("tiled" in info["search"]["available_backends"])
        True
        >>> json.loads(json.dumps(info)) == info
        True
    """
    return {
        "lightly_grpo": lightly_grpo.__version__,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": _torch_info(),
        "faiss": _faiss_info(),
        "tiled_kernel": _kernel_info(),
        "search": _search_info(),
    }


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`environment_info`'s dict, one topic a line.

    Args:
        info: What :func:`environment_info` returned.

    Returns:
        Lines without a trailing newline.

    Examples:
        >>> "tiled kernel:" in format_info(environment_info())
        True
    """
    packages = ", ".join(
        f"{name} {version if version is not None else '(not installed)'}"
        for name, version in info["packages"].items()
    )
    t = info["torch"]
    devices = f" ({', '.join(t['cuda_devices'])})" if t["cuda_devices"] else ""
    torch_line = (
        f"{t['version']}, CUDA build {t['cuda_build'] or 'none'}, CUDA available: "
        f"{_yes_no(t['cuda_available'])}, {t['cuda_device_count']} device(s){devices}, "
        f"default device {t['default_device']}, {t['num_threads']} threads"
    )
    f = info["faiss"]
    if f["installed"]:
        dists = f" ({', '.join(f['distributions'])})" if f["distributions"] else ""
        faiss_line = f"{f['version']}, {f['build']} build{dists}, GPUs for FAISS: {f['num_gpus']}"
    else:
        faiss_line = "not installed (install the 'faiss-cpu' or 'faiss-gpu' extra)"
    k = info["tiled_kernel"]
    if k["available"]:
        kernel_line = f"present ({k['module']}, {k['path']})"
    else:
        reason = f": {k['import_error']}" if k["import_error"] else ""
        kernel_line = (
            f"MISSING ({k['module']}{reason}); the CPU search falls back to a slower backend. "
            f"To get it, {search.KERNEL_INSTALL_HINT}"
        )
    s = info["search"]
    cuda_note = "" if t["cuda_available"] else " (no CUDA device here)"
    search_line = f"{s['auto_cpu']} for CPU data, {s['auto_cuda']} for CUDA data{cuda_note}" + (
        f"; torch for k > {s['faiss_gpu_max_k']} on FAISS GPU"
        if s["auto_cuda"] == "faiss-gpu"
        else ""
    )
    lines = [
        f"lightly-grpo {info['lightly_grpo']} (Python {info['python']}, {info['platform']})",
        f"packages: {packages}",
        f"torch: {torch_line}",
        f"faiss: {faiss_line}",
        f"tiled kernel: {kernel_line}",
        f"search backends available: {', '.join(s['available_backends'])}",
        f'search "auto": {search_line}',
    ]
    return "\n".join(lines)


def print_info(as_json: bool = False) -> None:
    """Prints :func:`environment_info`: as lines, or as indented JSON with ``as_json``.

    Examples:
        >>> print_info(as_json=True)  # doctest: +ELLIPSIS
        {
          "lightly_grpo": ...
        }
    """
    info = environment_info()
    print(json.dumps(info, indent=2) if as_json else format_info(info))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lightly_grpo.info [--json]``, the same as ``lightly-grpo info``."""
    parser = argparse.ArgumentParser(
        prog="python -m lightly_grpo.info",
        description="Versions, devices and kNN search backends of this installation.",
    )
    parser.add_argument("--json", action="store_true", help="print the information as JSON")
    print_info(parser.parse_args(argv).json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
