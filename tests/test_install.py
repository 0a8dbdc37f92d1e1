"""Installed like a library: a wheel (not an editable install) whose console scripts find the shipped presets from
any directory; and the linter the CI runs."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

# At least these; the test runs every console script the wheel declares.
ENTRY_POINTS = ("gpt2-prepare-data", "gpt2-train", "gpt2-eval-hellaswag", "gpt2-val-loss", "gpt2-configs")


def _source_files() -> list[str]:
    """The files a clean clone has (git ls-files), or everything but caches when this is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [f for f in out.splitlines() if not f.startswith(("tests/", "bench/"))]
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not {".venv", ".git", "tests", "bench", "__pycache__"} & set(p.relative_to(ROOT).parts)]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only our wheel; the dependencies come from this interpreter's site-packages (no
    download), through a .pth line: a path line, so this environment's own (editable) gpt2-hf is not imported."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in _source_files():  # build from a copy: no build/ or egg-info left in the checkout
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name, follow_symlinks=False)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("gpt2_hf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    declared = zipfile.ZipFile(wheel).read(entry_points).decode()
    scripts = [line.split("=")[0].strip() for line in declared.split("[console_scripts]")[1].split("[")[0].splitlines()
               if "=" in line]
    assert set(ENTRY_POINTS) <= set(scripts), scripts
    (tmp / "scripts.txt").write_text("\n".join(scripts))
    for preset in ("modeling/configs/train/cpu-demo.yaml", "modeling/configs/model/gpt2-124m.json",
                   "modeling/configs/accelerate/cpu-ddp.yaml", "modeling/lm_eval_tasks/hellaswag_local/hellaswag_local.yaml"):
        assert preset in names, preset
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_wheel_console_scripts_work_from_any_directory(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bin_dir = installed / "bin"
    # All at once: each start-up imports transformers (seconds); in parallel the test costs about one of them.
    scripts = (installed.parent / "scripts.txt").read_text().split()
    runs = {name: subprocess.Popen([str(bin_dir / name), "--help"], cwd=tmp_path, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in scripts}
    # Preset lookups: the recipe and the model preset by name (the run then stops at the missing shards).
    runs["lookup"] = subprocess.Popen([str(bin_dir / "gpt2-train"), "cpu-demo", "--data_dir", "nowhere", "--output_dir",
                                       "out"], cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs["path"] = subprocess.Popen([str(bin_dir / "gpt2-configs"), "accelerate/cpu-ddp"], cwd=tmp_path, env=env,
                                    text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {name: (p.wait(timeout=300), *p.communicate()) for name, p in runs.items()}
    for name in scripts:
        code, out, err = results[name]
        assert code == 0 and out.startswith(f"usage: {name}"), (name, err)
    code, out, err = results["lookup"]
    assert code != 0 and "Traceback" not in err and "No train shards" in err, err  # the recipe and preset were found
    code, out, err = results["path"]
    site = Path(sysconfig.get_paths(vars={"base": str(installed), "platbase": str(installed)})["purelib"])
    assert code == 0 and Path(out.strip()) == site / "modeling/configs/accelerate/cpu-ddp.yaml", (out, err)


def test_linter_is_clean():
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
