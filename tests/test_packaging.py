"""The distribution carries every subpackage and data file the code needs (a wheel, not only an editable install)."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def test_every_subpackage_is_listed():
    config = _setup()
    listed = set(config["options"]["packages"].split())
    mapping = dict(line.split(" = ") for line in config["options"]["package_dir"].strip().splitlines())
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert found - listed == set(), "add these to setup.cfg [options] packages"


def test_package_data_covers_the_data_folder():
    patterns = _setup()["options.package_data"]["avemo"].replace(",", " ").split()
    shipped = {p for pattern in patterns for p in (ROOT / "avemo").glob(pattern)}
    assert set((ROOT / "avemo" / "data").iterdir()) <= shipped


def test_the_wheel_installs_with_the_runtime_extra_and_runs_infer_without_torch(colearn_export, tmp_path):
    """`make wheel`'s command, then a fresh venv as on a device. Cheap: the extra's packages are not
    downloaded again but reused from this venv (a .pth added after the wheel is installed), and the
    wheel's requirements for the extra are checked against them as pip would."""
    import json
    import subprocess
    import sys
    import sysconfig
    import zipfile

    from packaging.requirements import Requirement

    def run(*command: str) -> str:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    pip = [sys.executable, "-m", "pip"]
    run(*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT))
    (wheel,) = (tmp_path / "dist").glob("avemo-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert {"avemo/data/face_detection_yunet_2023mar_fp32.onnx", "avemo/data/sample_face_astronaut.png"} <= names
    assert "avemo/runtime/cli.py" in names and not any(n.startswith(("runtime/", "train/")) for n in names)
    venv = tmp_path / "device"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = str(venv / "bin" / "python")
    run(*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", str(wheel))
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    (Path(site) / "reuse-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    extra = [Requirement(line.split(":", 1)[1]) for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in extra if not r.marker or r.marker.evaluate({"extra": "runtime"})]  # base + extra
    assert {r.name for r in runtime} >= {"onnxruntime", "av", "click", "numpy"}
    check = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    versions = json.loads(run(python, "-c", check, *(r.name for r in runtime)))
    assert all(r.specifier.contains(versions[r.name], prereleases=True) for r in runtime), versions
    clip = tmp_path / "clip.mp4"
    no_torch = (
        "import sys; sys.modules['torch'] = None; import avemo, avemo.cli; print(avemo.__file__, file=sys.stderr); "
    )
    cli = [python, "-c", no_torch + "avemo.cli.main()"]
    run(*cli, "sample", str(clip), "--seconds", "1")
    lines = run(*cli, "infer", str(clip), "--models", str(colearn_export[0]))
    assert json.loads(lines)["modality"] == "av"
    where = subprocess.run([*cli, "--version"], capture_output=True, text=True, check=False, cwd=tmp_path).stderr
    assert str(venv) in where  # the wheel's avemo, not this checkout's


def test_extras_carry_what_the_checks_and_the_gpu_path_need():
    """onnx in the runtime extra (`avemo verify` runs fp16 graphs in ONNX's reference evaluator); pycuda
    2025.1.2 or newer in the trt extra (its context fix for CUDA 13)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    extras = _setup()["options.extras_require"]
    runtime = {Requirement(r).name for r in extras["runtime"].split("\n") if r and not r.startswith("#")}
    assert "onnx" in runtime
    (pycuda,) = (Requirement(r) for r in extras["trt"].split("\n") if r.startswith("pycuda"))
    assert not pycuda.specifier.contains(Version("2025.1.1")) and pycuda.specifier.contains(Version("2025.1.2"))
