"""The two layers stay apart, the compute-device description, and the command line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from hm_recs.cli import build_parser, main
from hm_recs.compute import DeviceSpec
from hm_recs.paths import PROJECT_ROOT

# the application layer: the Dagster definitions and what drives them (the demo, the command line)
APP = {"defs", "definitions.py", "demo.py", "cli.py", "__init__.py", "__pycache__"}
CORE = sorted(
    p.name
    for p in (PROJECT_ROOT / "hm_recs").iterdir()
    if p.name not in APP and (p.is_dir() or p.suffix == ".py")
)


def test_the_layer_test_covers_every_core_package():
    assert {
        "data",
        "sessions",
        "evaluation",
        "baselines",
        "models",
        "retrieval",
        "registry",
        "synth",
        "profiles.py",
    } <= set(CORE)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0] if node.level == 0 else "")
            if node.module.startswith("hm_recs.defs"):
                names.add("hm_recs.defs")
    return names


@pytest.mark.parametrize("part", CORE)
def test_core_never_imports_dagster(part):
    root = PROJECT_ROOT / "hm_recs" / part
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    assert files
    for f in files:
        mods = imported_modules(f)
        assert not {"dagster", "dagster_pyspark", "hm_recs.defs"} & mods, f"{f} imports the Dagster layer"


def test_device_spec():
    spec = DeviceSpec("cpu", 1, "32-true")
    assert str(spec.torch_device()) == "cpu"
    assert spec.lightning_kwargs() == {
        "accelerator": "cpu",
        "devices": 1,
        "strategy": "auto",
        "precision": "32-true",
    }
    assert DeviceSpec("cpu", 2).lightning_kwargs()["strategy"] == "ddp_spawn"
    assert DeviceSpec("cpu", 1, "16-mixed").lightning_kwargs()["precision"] == "bf16-mixed"
    with pytest.raises(ValueError):
        DeviceSpec("tpu")
    with pytest.raises(ValueError):
        DeviceSpec("cpu", 1, "8-bit")


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("synth", "calibrate", "validate", "demo"):
        assert cmd in out


def test_cli_version_and_help_without_a_command(capsys):
    from hm_recs import __version__
    from hm_recs.cli import SCALE_NAMES
    from hm_recs.synth.generator import SCALES

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"hm-recs {__version__}"
    assert main([]) == 0 and "COMMAND" in capsys.readouterr().out
    assert set(SCALE_NAMES) == set(SCALES)


def test_console_script_runs():
    exe = Path(sys.executable).parent / "hm-recs"
    out = subprocess.run([str(exe), "synth", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--scale" in out.stdout and "tiny | small | medium | full" in out.stdout


def test_synth_and_validate_commands(tmp_path, capsys):
    assert (
        main(["synth", "--out", str(tmp_path / "d"), "--scale", "tiny", "--seed", "3", "--images", "none"])
        == 0
    )
    assert "12,000 transactions" in capsys.readouterr().out
    assert main(["validate", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "clean/transactions" in out and "rejected        0" in out
    with open(tmp_path / "d" / "transactions_train.csv", "a") as f:
        f.write("2020-09-22,nothex,0108775015,0.01,2\n" * 500)
    assert main(["validate", str(tmp_path / "d"), "--show", "1"]) == 1  # 500 of 12,500 rejected: over 1 %
    out = capsys.readouterr().out
    assert "customer_id: expected" in out and "transactions_train.csv:12002:" in out
    with pytest.raises(SystemExit) as exc:  # argparse refuses an unknown scale before any work
        main(["synth", "--out", str(tmp_path / "e"), "--scale", "huge"])
    assert exc.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing")]) == 2
    header = (tmp_path / "d" / "transactions_train.csv").read_text().splitlines()[0]
    (tmp_path / "d" / "transactions_train.csv").write_text(header + "\n")
    assert main(["validate", str(tmp_path / "d")]) == 4  # header only: would empty the table
    assert "WARNING: clean/transactions would have no rows" in capsys.readouterr().err
    import gzip

    body = gzip.compress((header + "\n" + "2020-09-22,abc,0108775015,0.01,2\n" * 20_000).encode())
    (tmp_path / "d" / "transactions_train.csv").unlink()
    (tmp_path / "d" / "transactions_train.csv.gz").write_bytes(body[: len(body) // 2])  # cut in the middle
    assert main(["validate", str(tmp_path / "d")]) == 3
    err = capsys.readouterr().err
    assert "transactions_train.csv.gz: cannot be read" in err and "Traceback" not in err


def test_the_environment_is_read_in_one_place():
    """Only hm_recs/settings.py reads environment variables (the demo may still set a few for the
    Dagster process it drives: DAGSTER_HOME, HM_DATA_DIR, HM_PROFILE)."""
    import re

    reads = re.compile(r"os\.environ\.get\(|os\.getenv\(|os\.environ\[[^\]]+\](?!\s*=)")
    offenders = [
        f"{p.relative_to(PROJECT_ROOT)}:{i}"
        for p in sorted((PROJECT_ROOT / "hm_recs").rglob("*.py"))
        if p.name != "settings.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if reads.search(line)
    ]
    assert offenders == []
    from hm_recs.settings import setting

    with pytest.raises(KeyError, match="not a declared"):
        setting("HM_NOT_A_SETTING")


def test_a_stored_lookup_does_not_load_the_model_libraries():
    """`hm-recs recommend` reads the stored lists: the resources it builds must not pull in torch or
    Lightning (importing them took 5 of the command's 12 seconds)."""
    code = (
        "import sys; import hm_recs.cli, hm_recs.defs.resources, hm_recs.registry.serving; "
        "print(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
