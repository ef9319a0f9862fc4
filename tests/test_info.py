"""`environment_info` / `lightly-grpo info`, and the one warning of a missing tiled kernel."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator

import pytest
import torch

from lightly_grpo.index import search, tiled
from lightly_grpo.index.search import knn_search, resolve_backend
from lightly_grpo.info import PACKAGES, environment_info, format_info, main


def _kernel_importable() -> tuple[bool, str | None]:
    try:
        importlib.import_module("lightly_grpo._tiled_topk")
    except ImportError as error:
        return False, str(error)
    return True, None


def _fallback() -> str:
    """What "auto" runs on the CPU without the kernel."""
    return "faiss" if search.faiss is not None else "torch"


@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An installation without the compiled kernel, in a process that has not warned yet."""
    monkeypatch.setattr(tiled, "_kernel", None)
    monkeypatch.setattr(tiled, "_kernel_import_error", "ImportError: no module _tiled_topk")
    monkeypatch.setattr(search, "_missing_kernel_warned", False)
    yield


def _user_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_environment_info_describes_the_installed_packages() -> None:
    info = environment_info()
    assert json.loads(json.dumps(info)) == info
    assert set(info) == {
        "lightly_grpo",
        "python",
        "python_executable",
        "platform",
        "packages",
        "torch",
        "faiss",
        "tiled_kernel",
        "search",
    }
    assert info["lightly_grpo"] == importlib.metadata.version("lightly-grpo")
    assert set(info["packages"]) == set(PACKAGES)
    for name in PACKAGES:  # all are dependencies of the package: installed here
        assert info["packages"][name] == importlib.metadata.version(name)

    t = info["torch"]
    assert t["version"] == torch.__version__
    assert t["cuda_available"] is torch.cuda.is_available()
    assert t["cuda_device_count"] == (torch.cuda.device_count() if t["cuda_available"] else 0)
    assert len(t["cuda_devices"]) == t["cuda_device_count"]
    assert t["default_device"] == str(torch.get_default_device())
    assert isinstance(t["num_threads"], int) and t["num_threads"] >= 1

    f = info["faiss"]
    assert f["installed"] is (importlib.util.find_spec("faiss") is not None)
    if f["installed"]:
        import faiss

        assert f["version"] == faiss.__version__
        assert f["build"] == ("gpu" if hasattr(faiss, "StandardGpuResources") else "cpu")
        assert f["num_gpus"] == faiss.get_num_gpus()
        assert f["distributions"] and all(d.startswith("faiss") for d in f["distributions"])
    else:
        assert (f["build"], f["num_gpus"]) == (None, 0)

    importable, error = _kernel_importable()
    k = info["tiled_kernel"]
    assert k["module"] == "lightly_grpo._tiled_topk"
    assert k["available"] is importable
    assert (k["path"] is not None) is importable
    if importable:
        assert k["import_error"] is None
    else:
        assert k["import_error"] is not None and error is not None and error in k["import_error"]

    s = info["search"]
    assert s["available_backends"] == search.available_backends()
    assert ("tiled" in s["available_backends"]) is importable
    assert s["auto_cpu"] == ("tiled" if importable else _fallback())
    assert s["auto_cpu"] == resolve_backend("auto", "cpu")
    assert s["auto_cuda"] in ("faiss-gpu", "faiss", "torch")
    assert s["auto_cuda"] == resolve_backend("auto", "cuda")


def test_format_info_names_the_backends() -> None:
    info = environment_info()
    text = format_info(info)
    assert f'search "auto": {info["search"]["auto_cpu"]} for CPU data' in text
    assert ("tiled kernel: present" in text) is info["tiled_kernel"]["available"]
    assert info["packages"]["pytorch-metric-learning"] in text


def test_cli_info_prints_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    from lightly_grpo.cli import main as cli_main

    capsys.readouterr()
    assert cli_main(["info", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == environment_info()
    assert cli_main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"lightly-grpo {printed['lightly_grpo']} ")
    assert f'search "auto": {printed["search"]["auto_cpu"]} for CPU data' in out


def test_module_main_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["search"] == environment_info()["search"]


def test_missing_kernel_warns_once_and_changes_no_result(no_kernel: None) -> None:
    x = torch.nn.functional.normalize(
        torch.randn(300, 16, generator=torch.Generator().manual_seed(0)), dim=1
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = knn_search(x, x, 7, exclude_self=True)
        second = knn_search(x[:50], x, 5, metric="l2")
    messages = _user_warnings(caught)
    assert len(messages) == 1, messages
    # It points at the caller's line, not at the search layer.
    assert [w.filename for w in caught if issubclass(w.category, UserWarning)] == [__file__]
    (message,) = messages
    assert "lightly_grpo._tiled_topk" in message
    assert f"backend='auto' uses {_fallback()!r}" in message
    assert "no module _tiled_topk" in message  # why the import failed
    assert "C++ compiler" in message and "--no-binary lightly-grpo" in message
    # The same backend as without the warning, so the same numbers.
    expected_first = knn_search(x, x, 7, exclude_self=True, backend=_fallback())
    expected_second = knn_search(x[:50], x, 5, metric="l2", backend=_fallback())
    for got, expected in ((first, expected_first), (second, expected_second)):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_missing_kernel_info_and_explicit_tiled(no_kernel: None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = environment_info()  # describing the fallback is no search: no warning
        assert resolve_backend("auto", "cuda") in ("faiss-gpu", "faiss", "torch")  # no kernel use
        assert resolve_backend("auto", "cpu", warn=False) == _fallback()
    assert _user_warnings(caught) == []
    assert search._missing_kernel_warned is False
    assert info["tiled_kernel"] == {
        "module": "lightly_grpo._tiled_topk",
        "available": False,
        "path": None,
        "import_error": "ImportError: no module _tiled_topk",
    }
    assert info["search"]["auto_cpu"] == _fallback()
    assert "tiled" not in info["search"]["available_backends"]
    assert "tiled kernel: MISSING" in format_info(info)
    # Asking for the tiled backend explicitly still fails, and says how to get it.
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match=r"backend='tiled' needs the compiled extension") as error:
        knn_search(x, x, 3, backend="tiled")
    assert "C++ compiler" in str(error.value) and "--no-binary" in str(error.value)


def test_no_warning_with_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    if not tiled.tiled_available():
        pytest.skip("the compiled kernel is not built here")
    monkeypatch.setattr(search, "_missing_kernel_warned", False)
    x = torch.nn.functional.normalize(torch.randn(200, 8), dim=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_backend("auto", "cpu") == "tiled"
        knn_search(x, x, 5, exclude_self=True)
    assert _user_warnings(caught) == []


# A process in which `import lightly_grpo._tiled_topk` fails, as it does after an install without
# a C++ compiler: two searches, then the info as JSON on stdout.
_NO_KERNEL_SCRIPT = """
import sys
sys.modules["lightly_grpo._tiled_topk"] = None  # the import raises ImportError
import torch
from lightly_grpo.index import knn_search
from lightly_grpo.info import print_info
x = torch.randn(200, 8)
knn_search(x, x, 5)
knn_search(x, x, 5, exclude_self=True)
print_info(as_json=True)
"""


def test_an_install_without_the_kernel_warns_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _NO_KERNEL_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    # Python's default warning filters show it, once.
    assert done.stderr.count("UserWarning") == 1, done.stderr
    assert "lightly_grpo._tiled_topk" in done.stderr and "C++ compiler" in done.stderr
    info = json.loads(done.stdout)
    assert info["tiled_kernel"]["available"] is False
    assert (
        "ImportError" in info["tiled_kernel"]["import_error"]
        or "ModuleNotFound" in (info["tiled_kernel"]["import_error"])
    )
    assert info["search"]["auto_cpu"] == _fallback()
