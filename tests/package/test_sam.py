"""The SAM side of the project: the template validates with `sam validate
--lint` (the suite's one cfn-lint run over template.yaml; tests/template.rs lints
member-account.yaml), and `sam build` (run by scripts/test.sh, which waits for
it before this suite) left one arm64 Linux executable `bootstrap` per function
of the template, each under 8 MiB, which the built template deploys."""
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from gateway import load_template  # noqa: E402

BUILD = ROOT / ".aws-sam" / "build"
EM_AARCH64 = 0xB7
MAX_BOOTSTRAP_BYTES = 8 * 1024 * 1024  # Lambda bills cold starts by the package: each bootstrap stays under 8 MiB
SAM_ENV = dict(os.environ, SAM_CLI_TELEMETRY="0", AWS_DEFAULT_REGION="us-east-1")


def functions():
    template = load_template(ROOT / "template.yaml")
    return sorted(name for name, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function")


def test_sam_validate_with_lint_passes():
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "sam"), "validate", "--lint", "--template",
                           str(ROOT / "template.yaml")], cwd=ROOT, env=SAM_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout + done.stderr


@pytest.mark.parametrize("function", functions())
def test_sam_build_left_an_arm64_executable_bootstrap(function):
    bootstrap = BUILD / function / "bootstrap"
    assert bootstrap.is_file(), f"{bootstrap} missing: run `sam build --beta-features` (scripts/test.sh does)"
    assert os.access(bootstrap, os.X_OK), "not executable"
    with open(bootstrap, "rb") as f:
        header = f.read(20)
    assert header[:4] == b"\x7fELF", "not an ELF file"
    assert header[4] == 2, "not 64-bit"
    assert header[5] == 1, "not little-endian"
    (e_type, e_machine) = struct.unpack("<HH", header[16:20])
    assert e_type in (2, 3), "not an executable"  # ET_EXEC or ET_DYN (position-independent)
    assert e_machine == EM_AARCH64, f"machine {e_machine:#x}, not arm64"


@pytest.mark.parametrize("function", functions())
def test_each_bootstrap_is_under_8_mib(function):
    bootstrap = BUILD / function / "bootstrap"
    assert bootstrap.is_file(), f"{bootstrap} missing: run `sam build --beta-features` (scripts/test.sh does)"
    size = bootstrap.stat().st_size
    assert size < MAX_BOOTSTRAP_BYTES, f"{function}: bootstrap is {size / 2**20:.2f} MiB, not under 8 MiB"


def test_the_built_template_deploys_the_built_bootstraps():
    built = load_template(BUILD / "template.yaml")
    for function in functions():
        props = built["Resources"][function]["Properties"]
        assert props["CodeUri"] == function, props["CodeUri"]
        assert props.get("Handler", "bootstrap") == "bootstrap"
        assert (BUILD / props["CodeUri"] / "bootstrap").is_file()
