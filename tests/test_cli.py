"""The polyplug-isolated command: check, inspect, call, demo, bench, exit codes; from a wheel too."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import wait_until

import polyplug_isolated
from polyplug_isolated._cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polyplug_isolated", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        **kwargs,
    )


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"polyplug-isolated {polyplug_isolated.__version__}"
    assert polyplug_isolated.__version__ == "0.1.0"


def test_check_a_sound_bundle(fixtures_root, capsys):
    assert main(["--plain", "check", str(fixtures_root / "kitchen_sink")]) == 0
    out = capsys.readouterr().out
    assert "ok   load in a worker: registered test.kitchen" in out
    assert out.rstrip().endswith("no problems")


def test_check_reports_every_problem(fixtures_root, tmp_path, capsys):
    bundle = Path(shutil.copytree(fixtures_root / "adder", tmp_path / "adder"))
    manifest = bundle / "manifest.toml"
    manifest.write_text('descripton = "typo"\n' + manifest.read_text())
    api = bundle / "api.toml"
    api.write_text(api.read_text() + '\n[[contract.functions]]\nname = "extra"\n')
    (bundle / "api.toml").write_text(
        api.read_text() + '\n[[contract]]\nname = "test.other"\nversion = "1.0.0"\n'
    )
    assert main(["check", "--plain", str(bundle)]) == 1
    out = capsys.readouterr().out
    assert "warn manifest.toml: unknown key 'descripton' is ignored" in out
    assert "FAIL test.add: api.toml declares 5 functions, the library registered 4" in out
    assert "FAIL api.toml declares test.other@1; the library did not register it" in out
    assert out.rstrip().endswith("2 problem(s)")


def test_check_a_bundle_that_does_not_load(fixtures_root, capsys):
    assert main(["check", "--plain", str(fixtures_root / "no_init")]) == 1
    assert "FAIL load in a worker: bundle 'no_init': init symbol missing" in capsys.readouterr().out


def test_check_a_broken_manifest_still_checks_the_api(fixtures_root, tmp_path, capsys):
    bundle = Path(shutil.copytree(fixtures_root / "adder", tmp_path / "adder"))
    (bundle / "manifest.toml").write_text("name = ")
    assert main(["check", "--plain", str(bundle)]) == 1
    out = capsys.readouterr().out
    assert "FAIL manifest.toml: bundle at" in out and "not valid TOML" in out
    assert "ok   api.toml: declares test.add@1" in out


def test_inspect_lists_typed_signatures(fixtures_root, capsys):
    assert main(["inspect", "--plain", str(fixtures_root / "adder")]) == 0
    out = capsys.readouterr().out
    assert "test.add@1.0.0  id 0x" in out
    assert "add_primitive(a: u32, b: u32) -> u32" in out
    assert "(a: int, b: int) -> int" in out
    assert "reset() -> void" in out


def test_call_types_arguments_from_the_api(fixtures_root, capsys):
    kitchen = str(fixtures_root / "kitchen_sink")
    assert main(["call", str(fixtures_root / "adder"), "test.add.add_primitive", "2", "0x3"]) == 0
    assert main(["call", kitchen, "test.kitchen.describe", "job", "3", "ReadWrite"]) == 0
    assert main(["call", kitchen, "test.kitchen.echo_point", '{"x": 1.5, "y": 2}']) == 0
    assert capsys.readouterr().out.splitlines() == ["5", "job x3 [rw-]", "Point(x=1.5, y=2.0)"]


def test_call_failures_have_exit_codes_and_no_traceback(fixtures_root):
    kitchen = str(fixtures_root / "kitchen_sink")
    failed = cli("call", kitchen, "test.kitchen.divide", "1", "0")
    assert failed.returncode == 1
    assert "PluginCallError: bundle 'kitchen_sink': test.kitchen@1.divide() (function 25)" in failed.stderr
    for args in (["test.kitchen.nope"], ["test.kitchen.divide", "1"], ["divide", "1", "2"]):
        usage = cli("call", kitchen, *args)
        assert usage.returncode == 2, usage
        assert "Traceback" not in usage.stderr
    assert cli("call", kitchen, "test.kitchen.echo_u8", "256").returncode == 2
    assert "Traceback" not in cli("call", kitchen, "test.kitchen.echo_u8", "256").stderr


def test_bench_help_is_the_benchmarks_own(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--json", "--plot", "--only"):
        assert option in out


def test_a_closed_pipe_ends_quietly_with_141(fixtures_root):
    process = subprocess.Popen(
        [sys.executable, "-m", "polyplug_isolated", "demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().startswith("adder (pid")
    process.stdout.close()  # as `| head -1` does
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_ctrl_c_ends_quietly_with_130(fixtures_root):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polyplug_isolated",
            "call",
            str(fixtures_root / "slow"),
            "test.slow.sleep_ms",
            "1500",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: bool(psutil.Process(process.pid).children()))  # its worker runs: the call is near
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in stderr


def test_demo_bench_and_headers_work_from_a_plain_wheel_install(tmp_path):
    """Before: the demo died with FixtureBuildError and bench needed the source tree."""
    wheels, site, cache, elsewhere = (tmp_path / name for name in ("wheels", "site", "cache", "elsewhere"))
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # From a clean copy: an in-tree build would reuse (and ship) whatever build/ holds.
    source = shutil.copytree(
        ROOT,
        tmp_path / "source",
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.so", "__pycache__", ".*cache", "*.egg-info"
        ),
    )
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(cache)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    demo = run("-m", "polyplug_isolated", "demo")
    assert demo.returncode == 0, demo.stderr
    assert re.search(r"workers left after close +0\n", demo.stdout), demo.stdout
    assert (cache / "polyplug_isolated" / "fixtures" / "adder" / "libadder.so").is_file()
    bench = run("-m", "polyplug_isolated", "bench", "--help")
    assert bench.returncode == 0 and "--quick" in bench.stdout
    include = run("-c", "import polyplug_isolated as p; print(p.get_include())")
    assert Path(include.stdout.strip()) == site / "polyplug_isolated" / "worker"
    assert (site / "polyplug_isolated" / "worker" / "polyplug_abi.h").is_file()
    assert (site / "polyplug_isolated" / "py.typed").is_file()


def test_without_rich_the_output_is_plain_text(fixtures_root):
    blocked = (
        "import sys; sys.modules['rich'] = None; from polyplug_isolated._cli import main; sys.exit(main())"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked, "inspect", str(fixtures_root / "adder")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "  1  add_primitive(a: u32, b: u32) -> u32  (a: int, b: int) -> int" in result.stdout
    assert "┃" not in result.stdout
