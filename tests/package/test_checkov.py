"""checkov (pinned in scripts/requirements.txt) over both templates, template.yaml
and member-account.yaml: no check fails. A finding that does not apply is
skipped on its resource, in the template, with the reason next to it:

    Metadata:
      checkov:
        skip:
          - id: CKV_AWS_117
            comment: >-
              No VPC: ...

(on a SAM function, `checkov:` sits beside BuildMethod and BuildProperties).
Every such skip must carry its reason and must still be used (a skip whose
finding was fixed, or whose id is mistyped, fails the test).

checkov is given the two files by name: the built copy of the template
(.aws-sam/build/template.yaml) and anything else in the tree are not scanned.
It runs offline: --skip-download keeps it from fetching the vendor's check
metadata, and a proxy that refuses (a closed port on this machine) answers the
version check it makes whenever it is imported.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import cfn  # noqa: E402

CHECKOV = ROOT / ".venv" / "bin" / "checkov"
TEMPLATES = ("template.yaml", "member-account.yaml")
REFUSING_PROXY = "http://127.0.0.1:9"


def offline_env():
    env = {k: v for k, v in os.environ.items()
           # No check list or skip list from the environment: only the templates decide.
           if not k.startswith(("CKV_", "BC_"))
           and k.lower() not in ("no_proxy", "http_proxy", "https_proxy", "all_proxy")}
    env.update(HTTP_PROXY=REFUSING_PROXY, HTTPS_PROXY=REFUSING_PROXY,
               http_proxy=REFUSING_PROXY, https_proxy=REFUSING_PROXY, BC_SKIP_MAPPING="TRUE")
    return env


@pytest.fixture(scope="module")
def report():
    """checkov's JSON report of both templates (one run: most of its time is its start)."""
    for name in (".checkov.yaml", ".checkov.yml"):
        assert not (ROOT / name).exists(), f"{name}: skips belong on the resources in the templates"
    args = [str(CHECKOV), "--framework", "cloudformation", "--output", "json", "--skip-download"]
    for template in TEMPLATES:
        args += ["--file", template]
    done = subprocess.run(args, cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), f"checkov exited {done.returncode}:\n{done.stdout}{done.stderr}"
    report = json.loads(done.stdout)
    assert isinstance(report, dict) and report.get("check_type") == "cloudformation", done.stdout[:2000]
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    return report


def results(report, kind, template):
    return [r for r in report["results"][kind] if r["file_path"].lstrip("/") == template]


def test_checkov_scans_only_the_two_templates(report):
    scanned = {r["file_path"].lstrip("/") for kind in ("passed_checks", "failed_checks", "skipped_checks")
               for r in report["results"][kind]}
    assert scanned == set(TEMPLATES), scanned


@pytest.mark.parametrize("template", TEMPLATES)
def test_no_checkov_check_fails(report, template):
    failed = results(report, "failed_checks", template)
    if failed:
        pytest.fail(
            f"checkov {report['summary']['checkov_version']}: {len(failed)} failed check(s) in {template}; fix each "
            "or skip it on the resource with its reason (Metadata: checkov: skip: - id, comment):\n"
            + "\n".join(f"  {r['check_id']} {r['resource']} (lines {r['file_line_range'][0]}-"
                        f"{r['file_line_range'][1]}): {r['check_name']}" for r in failed),
            pytrace=False)
    assert results(report, "passed_checks", template), f"checkov passed no check in {template}: did it read it?"


def skips_in(template):
    """(resource, id, comment) of every checkov skip in the template."""
    found = []
    for name, resource in cfn.load(ROOT / template)["Resources"].items():
        metadata = resource.get("Metadata") or {}
        assert "bridgecrew" not in metadata, f"{name}: use the checkov: key for skips"
        for skip in (metadata.get("checkov") or {}).get("skip") or []:
            found.append((name, skip.get("id"), skip.get("comment")))
    return found


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_checkov_skip_gives_its_reason(template):
    for name, check, comment in skips_in(template):
        assert isinstance(check, str) and re.fullmatch(r"CKV2?_[A-Z]+_\d+", check), f"{name}: skip id {check!r}"
        assert isinstance(comment, str) and len(comment.split()) >= 5, \
            f"{name}: the skip of {check} needs its reason in `comment`, not {comment!r}"


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_checkov_skip_is_used(report, template):
    skipped = {(r["resource"].split(".", 1)[1], r["check_id"]): r["check_result"].get("suppress_comment")
               for r in results(report, "skipped_checks", template)}
    declared = {(name, check) for name, check, _ in skips_in(template)}
    unused = sorted(declared - set(skipped))
    if unused:
        pytest.fail(f"skips in {template} that checkov did not use (fixed, or a wrong id?): {unused}", pytrace=False)
    # And checkov read each one's reason (it says "No comment provided" when it finds none).
    for (name, check), comment in skipped.items():
        assert (name, check) in declared, f"{name} {check}: skipped outside the template"
        assert comment and comment != "No comment provided", f"{name} {check}: {comment!r}"
