"""What `pip install petal-vision[...]` gives on each platform and Python, and how `make` picks an interpreter.

The markers are checked here offline, for every platform scripts/platforms.py knows; whether PyPI has the
wheels is that script's job (it needs network and minutes; its table is in docs/INSTALL.md).
"""

import importlib
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from petal.errors import MissingDependencyError

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SUPPORTED = ("3.11", "3.12", "3.13")
MAKE = shutil.which("make")


def load_platforms():
    spec = importlib.util.spec_from_file_location("petal_scripts_platforms", REPO / "scripts" / "platforms.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


platforms = load_platforms()


def requirements(extra: str, platform, python: str) -> dict[str, Requirement]:
    """The requirements an extra ('base': none) adds on a platform and Python, by distribution name."""
    env = platforms.marker_environment(platform, python)
    chosen = {}
    for line in PROJECT["dependencies"] if extra == "base" else PROJECT["optional-dependencies"][extra]:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
            chosen[req.name] = req
    return chosen


def test_the_distribution_is_petal_vision_and_the_import_name_and_command_stay_petal():
    assert PROJECT["name"] == "petal-vision"
    assert PROJECT["scripts"] == {"petal": "petal.cli:main"}
    assert (REPO / "src" / "petal" / "__init__.py").exists()


def test_python_311_to_313_are_supported_and_said_so():
    allowed = SpecifierSet(PROJECT["requires-python"])
    assert [v for v in ("3.10.14", "3.11.0", "3.12.9", "3.13.5", "3.14.0") if v in allowed] == ["3.11.0", "3.12.9", "3.13.5"]
    classified = [c.rsplit(" :: ", 1)[1] for c in PROJECT["classifiers"] if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert classified == list(SUPPORTED)
    assert tuple(platforms.PYTHONS) == SUPPORTED


@pytest.mark.parametrize("python", SUPPORTED)
@pytest.mark.parametrize("platform", platforms.PLATFORMS, ids=lambda p: p.name)
def test_train_gets_tensorflow_cpu_where_it_has_wheels_and_tensorflow_elsewhere(platform, python):
    chosen = requirements("train", platform, python)
    expected = "tensorflow-cpu" if platform.name in ("linux-x86_64", "windows-amd64") else "tensorflow"
    assert {"tensorflow", "tensorflow-cpu"} & chosen.keys() == {expected}
    assert str(chosen[expected].specifier) == "==2.21.0"
    assert {"keras", "matplotlib", "tqdm"} <= chosen.keys()


@pytest.mark.parametrize("platform", platforms.PLATFORMS, ids=lambda p: p.name)
def test_gpu_is_a_whole_training_install_on_linux_x86_64_and_adds_nothing_elsewhere(platform):
    gpu = requirements("gpu", platform, "3.12")
    if platform.name != "linux-x86_64":
        assert gpu == {}
        return
    assert gpu["tensorflow"].extras == {"and-cuda"} and str(gpu["tensorflow"].specifier) == "==2.21.0"
    train = requirements("train", platform, "3.12")
    rest = {name: str(req) for name, req in train.items() if not name.startswith("tensorflow")}
    assert {name: str(req.specifier) for name, req in gpu.items() if name != "tensorflow"} == {
        name: str(train[name].specifier) for name in rest}


def test_a_package_in_several_extras_is_pinned_the_same_in_each():
    pins: dict[str, set[str]] = {}
    for line in [*PROJECT["dependencies"], *(r for reqs in PROJECT["optional-dependencies"].values() for r in reqs)]:
        req = Requirement(line)
        pins.setdefault(req.name.removesuffix("-cpu"), set()).add(str(req.specifier))
    assert {name: specs for name, specs in pins.items() if len(specs) > 1} == {}
    assert all(re.fullmatch(r"==[\w.]+", spec) for specs in pins.values() for spec in specs)


def test_a_missing_extra_names_petal_vision_not_the_unrelated_petal():
    message = str(MissingDependencyError("petal train", "train", "keras"))
    assert message == "petal train needs keras, which is not installed: pip install 'petal-vision[train]'"


def test_no_doc_or_message_tells_users_to_install_the_unrelated_petal_from_pypi():
    # `petal` on PyPI is someone else's package; only `.`-style installs of a checkout may omit the new name.
    wrong = re.compile(r"petal\[|pip install\s+['\"]?petal(?![-\w])")
    files = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "src" / "petal").rglob("*.py")]
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in files
             for n, line in enumerate(path.read_text().splitlines(), 1) if wrong.search(line)]
    assert found == []


def test_the_platform_script_says_why_an_extra_is_not_offered_and_summarises_pip_errors():
    linux, mac = platforms.PLATFORMS[0], platforms.PLATFORMS[2]
    base = {"ok": True, "packages": {"numpy": "2.4.6"}, "error": ""}
    results = {(p.name, py, e): base for p in (linux, mac) for py in SUPPORTED for e in ("base", "gpu")}
    results[linux.name, "3.13", "gpu"] = {"ok": True, "packages": {"numpy": "2.4.6", "tensorflow": "2.21.0", "nvidia-cudnn-cu12": "9"}, "error": ""}
    assert platforms.cell(results, mac, "gpu", SUPPORTED).startswith("not offered: no CUDA on macOS")
    assert platforms.cell(results, linux, "gpu", SUPPORTED).splitlines()[0].startswith("3.11: not offered")
    assert "3.13: works (3 packages, tensorflow + CUDA libraries)" in platforms.cell(results, linux, "gpu", SUPPORTED)
    stderr = ("ERROR: Could not find a version that satisfies the requirement tensorflow-cpu==2.21.0 (from versions: none)\n"
              "ERROR: No matching distribution found for tensorflow-cpu==2.21.0\n")
    assert platforms.summarise_error(stderr) == "no wheel for tensorflow-cpu==2.21.0"


@pytest.mark.quick
def test_this_environment_has_every_extra_it_was_installed_with_at_the_pinned_versions():
    """Run in the venvs `make` and .ci/run create (petal-vision[train,serve,scale,test]) on each Python."""
    here = next(p for p in platforms.PLATFORMS if p.markers["sys_platform"] == sys.platform
                and p.markers["platform_machine"].lower() == __import__("platform").machine().lower())
    python = "%d.%d" % sys.version_info[:2]
    for extra in ("base", "train", "serve", "scale", "test"):
        for name, req in requirements(extra, here, python).items():
            assert importlib.metadata.version(name) in req.specifier, f"[{extra}] {req}"
    for module in ("ai_edge_litert.interpreter", "tensorflow", "keras", "matplotlib", "starlette", "uvicorn", "python_multipart",
                   "ray.data", "ray.train", "pyarrow", "psutil", "hypothesis", "playwright.sync_api", "httpx"):
        importlib.import_module(module)


def make(*args, env=None, cwd=REPO):
    return subprocess.run([MAKE, "--no-print-directory", "-s", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.mark.skipif(MAKE is None, reason="needs make")
def test_make_picks_a_supported_interpreter():
    # This interpreter's directory first on PATH: its python3 is supported, so make must pick it (or another supported one).
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": "/nonexistent"}
    result = make("python", env=env)
    assert result.returncode == 0, result.stderr
    version = subprocess.run([result.stdout.strip(), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    assert version in SUPPORTED


@pytest.mark.skipif(MAKE is None, reason="needs make")
def test_without_a_supported_interpreter_make_says_in_one_line_which_to_install(tmp_path):
    # A python3 that does not run (as a pyenv shim for an unselected version) and nothing else.
    (tmp_path / "bin").mkdir()
    for name in ("python3", "python3.12"):
        (tmp_path / "bin" / name).write_text("#!/bin/sh\nexit 127\n")
        (tmp_path / "bin" / name).chmod(0o755)
    env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}
    result = make("demo", "VENV=" + str(tmp_path / "venv"), env=env)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "petal needs Python 3.11, 3.12 or 3.13 and none was found" in line and "pyenv install 3.13" in line
    assert not (tmp_path / "venv").exists()
    result = make("python", f"PYTHON={tmp_path / 'bin' / 'python3'}", env=env)
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith(f"PYTHON={tmp_path / 'bin' / 'python3'} does not run: petal needs 3.11, 3.12 or 3.13 (not free-threaded); install one and pass it as PYTHON.  Stop.")


def test_every_package_data_pattern_names_files_that_exist_so_the_wheel_carries_them():
    import tomllib

    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, patterns in package_data.items():
        folder = REPO / "src" / package.replace(".", "/")
        assert folder.is_dir(), f"package-data names {package}, which is not a package folder"
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches nothing, so the wheel would lack it"
