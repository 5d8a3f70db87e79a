"""Which extras of petal-vision install where: pip's resolver, run for each platform's wheel tags.

For every platform x Python x extra this builds petal's wheel once (`pip wheel --no-deps`), then asks pip
what it would install, without installing anything:

    pip install --dry-run --ignore-installed --only-binary=:all: --target TMP --report R.json \\
        --platform TAG ... --python-version X.Y 'petal_vision-...whl[EXTRA]'

and prints a markdown table (platform x extra: works / not offered, and why / fails, and why).

pip applies `--platform` and `--python-version` to wheel tags and Requires-Python only: it evaluates
environment markers (`sys_platform == 'darwin'` ...) for the machine it runs on, so from Linux x86_64
it would ask for tensorflow-cpu on a Mac. The script therefore runs pip with its marker environment
set to the target platform's (pip's own resolver and index, one patched function); `--host-markers`
shows what plain pip does.

The index is PyPI (`--index-url`), and pip's configuration files and PIP_* settings of this machine
(local mirrors, constraints) are left out, so the table says what a user gets from PyPI. Needs network;
several minutes. Run from the repository root:

    python scripts/platforms.py                      # all platforms, Pythons and extras
    python scripts/platforms.py --python 3.12 --extra train --platform macos-arm64
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PYTHONS = ("3.11", "3.12", "3.13")
EXTRAS = ("base", "train", "serve", "scale", "test", "gpu", "train,serve,scale,test")


@dataclass(frozen=True)
class Platform:
    name: str
    label: str
    tags: tuple[str, ...]  # every wheel platform tag this machine accepts that the pinned wheels use
    markers: dict  # environment-marker values (PEP 508) of such a machine, except the Python version's


def _manylinux(arch: str) -> tuple[str, ...]:
    return tuple(f"manylinux_2_{minor}_{arch}" for minor in range(28, 16, -1)) + (f"manylinux2014_{arch}",)


PLATFORMS = (
    Platform("linux-x86_64", "Linux x86_64 (glibc ≥ 2.28)", _manylinux("x86_64"),
             {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}),
    Platform("linux-aarch64", "Linux aarch64 (glibc ≥ 2.28)", _manylinux("aarch64"),
             {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix"}),
    Platform("macos-arm64", "macOS arm64 (12 Monterey or later)",
             tuple(f"macosx_{major}_0_{arch}" for major in range(15, 10, -1) for arch in ("arm64", "universal2")),
             {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "os_name": "posix"}),
    Platform("windows-amd64", "Windows x86-64", ("win_amd64",),
             {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64", "os_name": "nt"}),
)

# Why an extra that adds nothing on a platform (its requirements' markers exclude it) is left out there.
# The resolver shows *that* it is left out; the reason is a fact about upstream builds, kept here.
NOT_OFFERED_WHY = {
    ("gpu", "linux-aarch64"): "TensorFlow's Linux aarch64 wheel is CPU-only; use `[train]`",
    ("gpu", "macos-arm64"): "no CUDA on macOS; Apple's tensorflow-metal plugin (1.2.0: no Python 3.13 wheel) is not tested with petal; use `[train]`",
    ("gpu", "windows-amd64"): "TensorFlow has no GPU build for native Windows since 2.10 (WSL2 is Linux x86_64); use `[train]`",
}

# Runs pip with the marker environment of the target platform (argv[1], JSON), then pip's argv[2:].
_PIP_FOR_TARGET = """
import json, sys
from pip._vendor.packaging import markers
target = json.loads(sys.argv[1])
host = markers.default_environment
markers.default_environment = lambda: {**host(), **target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def pip_environment() -> dict[str, str]:
    """This process's environment without pip's local configuration (config files, PIP_* settings), so
    the answers are PyPI's; a custom CA bundle (PIP_CERT) is kept, as it is about the network, not packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if "PIP_CERT" in os.environ:
        env["PIP_CERT"] = os.environ["PIP_CERT"]
    return env


def build_wheel(out: Path, index_url: str) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--index-url", index_url,
                    "--wheel-dir", str(out), str(REPO)], check=True, env=pip_environment())
    (wheel,) = out.glob("petal_vision-*.whl")
    return wheel


def marker_environment(platform: Platform, python: str) -> dict[str, str]:
    return {**platform.markers, "python_version": python, "python_full_version": f"{python}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def resolve(wheel: Path, platform: Platform, python: str, extra: str, index_url: str, host_markers: bool) -> dict:
    """pip's answer for one combination: {"ok": bool, "packages": {name: version}, "error": str}."""
    requirement = str(wheel) if extra == "base" else f"{wheel}[{extra}]"
    with tempfile.TemporaryDirectory(prefix="petal-platforms-") as tmp:
        report = Path(tmp) / "report.json"
        args = ["install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--quiet",
                "--target", str(Path(tmp) / "target"), "--report", str(report), "--index-url", index_url,
                "--python-version", python, "--implementation", "cp"]
        for tag in platform.tags:
            args += ["--platform", tag]
        args.append(requirement)
        if host_markers:
            command = [sys.executable, "-m", "pip", *args]
        else:
            command = [sys.executable, "-c", _PIP_FOR_TARGET, json.dumps(marker_environment(platform, python)), *args]
        result = subprocess.run(command, capture_output=True, text=True, env=pip_environment(), timeout=1800)
        if result.returncode != 0:
            return {"ok": False, "packages": {}, "error": summarise_error(result.stderr)}
        installs = json.loads(report.read_text())["install"]
        packages = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in installs}
        return {"ok": True, "packages": packages, "error": ""}


def summarise_error(stderr: str) -> str:
    """pip's reason in one line: the requirement that has no wheel, or its first ERROR line."""
    missing = re.search(r"No matching distribution found for (\S+)", stderr)
    if missing:
        return f"no wheel for {missing.group(1)}"
    requires_python = re.search(r"requires a different Python: (.+)", stderr)
    if requires_python:
        return f"requires a different Python: {requires_python.group(1).strip()}"
    errors = [line.removeprefix("ERROR: ").strip() for line in stderr.splitlines() if line.startswith("ERROR:")]
    return errors[0] if errors else (stderr.strip().splitlines() or ["pip failed without a message"])[-1]


def key_packages(packages: dict[str, str]) -> str:
    """The TensorFlow build an install gets, the part that differs between platforms."""
    for name in ("tensorflow-cpu", "tensorflow"):
        if name in packages:
            cuda = " + CUDA libraries" if any(p.startswith("nvidia-") for p in packages) else ""
            return f"{name}{cuda}"
    return ""


def cell(results: dict, platform: Platform, extra: str, pythons: tuple[str, ...]) -> str:
    """One table cell: the verdict for all Pythons, or per Python where they differ."""
    verdicts = {}
    for python in pythons:
        result, base = results[platform.name, python, extra], results[platform.name, python, "base"]
        if not result["ok"]:
            verdicts[python] = f"**fails**: {result['error']}"
        elif extra != "base" and base["ok"] and result["packages"] == base["packages"]:
            verdicts[python] = f"not offered: {NOT_OFFERED_WHY.get((extra, platform.name), 'its markers exclude this platform')}"
        else:
            detail = key_packages(result["packages"])
            verdicts[python] = f"works ({len(result['packages'])} packages{', ' + detail if detail else ''})"
    if len(set(verdicts.values())) == 1:
        return next(iter(verdicts.values()))
    return "<br>".join(f"{python}: {verdict}" for python, verdict in verdicts.items())


def table(results: dict, platforms, pythons, extras) -> str:
    lines = ["| platform | " + " | ".join(f"`[{e}]`" if e != "base" else "base (`pip install petal-vision`)" for e in extras) + " |",
             "|---" * (len(extras) + 1) + "|"]
    for platform in platforms:
        lines.append(f"| {platform.label} | " + " | ".join(cell(results, platform, e, pythons) for e in extras) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", nargs="+", choices=[p.name for p in PLATFORMS], default=[p.name for p in PLATFORMS])
    parser.add_argument("--python", nargs="+", choices=PYTHONS, default=list(PYTHONS))
    parser.add_argument("--extra", nargs="+", choices=EXTRAS, default=list(EXTRAS))
    parser.add_argument("--index-url", default="https://pypi.org/simple")
    parser.add_argument("--jobs", type=int, default=4, help="resolutions run at once (network-bound)")
    parser.add_argument("--json", type=Path, help="also write every resolution (packages and versions) here")
    parser.add_argument("--host-markers", action="store_true",
                        help="evaluate markers for this machine, as plain pip does (to see why the script does not)")
    args = parser.parse_args(argv)
    platforms = [p for p in PLATFORMS if p.name in args.platform]
    extras = list(dict.fromkeys(["base", *args.extra]))  # base is what "not offered" is measured against

    with tempfile.TemporaryDirectory(prefix="petal-wheel-") as tmp:
        wheel = build_wheel(Path(tmp), args.index_url)
        print(f"built {wheel.name}; resolving {len(platforms) * len(args.python) * len(extras)} combinations ...", file=sys.stderr)
        jobs = {(p.name, py, e): (p, py, e) for p in platforms for py in args.python for e in extras}
        results = {}
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(resolve, wheel, p, py, e, args.index_url, args.host_markers): key for key, (p, py, e) in jobs.items()}
            for future in concurrent.futures.as_completed(futures):
                key = futures[future]
                results[key] = future.result()
                print(f"  {' / '.join(key)}: {'ok' if results[key]['ok'] else results[key]['error']}", file=sys.stderr)

    shown = [e for e in extras if e in args.extra or e == "base"]
    print(f"Resolved with pip {pip_version()} against {args.index_url}, {datetime.date.today().isoformat()}, "
          f"Python {', '.join(args.python)}:\n")
    print(table(results, platforms, tuple(args.python), shown))
    if args.json:
        args.json.write_text(json.dumps({" / ".join(k): v for k, v in sorted(results.items())}, indent=1))
    # Non-zero when something fails that is meant to work: every failure is one.
    return 0 if all(r["ok"] for r in results.values()) else 1


def pip_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("pip")


if __name__ == "__main__":
    sys.exit(main())
