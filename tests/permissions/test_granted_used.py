"""Granted = used, both ways: each role of the templates grants what the functions
were seen to call under it, and nothing they were never seen to call, but for the
grants listed in UNCALLED with the reason they stay.

The calls are those the local AWS endpoint authorized during the whole suite: with
S3KR_CALLS_LOG set (scripts/test.sh sets it before the Rust and Python suites and
runs this file last), scripts/moto_server.py appends each (role, action, allowed or
refused) it sees; every function binary and every in-process function in the tests
runs under its template role (tests/common/mod.rs, scripts/local_aws.py)."""
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import cfn  # noqa: E402
from local_aws import MEMBER_ROLE, function_policies  # noqa: E402  (the runtime role's default name)

LOG = os.environ.get("S3KR_CALLS_LOG")
pytestmark = pytest.mark.skipif(not LOG, reason="needs the calls of the whole suite: run by scripts/test.sh")

# Granted, never called by the suite, and kept: (role, action) -> why.
UNCALLED = {
}


def granted():
    """{role: {action}}: the actions each template role allows."""
    out = {}
    # With member accounts (the statements that only then exist: sts:AssumeRole on their roles).
    for name, policies in function_policies({"MemberAccountRoles": f"arn:aws:iam::111111111111:role/{MEMBER_ROLE}"}).items():
        out[name] = {action for p in policies for s in p["Statement"] if s["Effect"] == "Allow"
                     for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    member = cfn.load(ROOT / "member-account.yaml")
    for resource in member["Resources"].values():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        name = cfn.resolve(resource["Properties"]["RoleName"], cfn.parameters(member))
        out[name] = {action for p in resource["Properties"].get("Policies", [])
                     for s in p["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"
                     for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    return out


def called():
    """{role: {action: allowed}} from the log; a function's role is named `{stack}-{logical id}Role-{digest}`."""
    out = defaultdict(dict)
    roles = granted()
    with open(LOG) as f:
        for line in f:
            entry = json.loads(line)
            role = entry["role"]
            for name in roles:
                if role == name or f"-{name}Role-" in role:
                    out[name][entry["action"]] = out[name].get(entry["action"], True) and entry["allowed"]
    return out


def test_the_suite_recorded_the_calls_of_every_role():
    assert Path(LOG).exists(), f"{LOG}: no call was recorded"
    seen = called()
    never = set(granted()) - set(seen)
    assert not never, f"roles the suite never ran under: {sorted(never)}"


def test_every_action_a_function_called_is_granted():
    # A call refused for its resource alone (a test deletes an org's user: IAM then authorizes
    # the call against a path-less ARN and refuses it) is the test's doing; an action the
    # role does not grant at all is a missing statement.
    roles = granted()
    missing = {(role, action) for role, actions in called().items() for action in actions
               if action not in roles[role]}
    assert not missing, "actions the functions call that their template role does not grant:\n" + \
        "\n".join(f"  {role}: {action}" for role, action in sorted(missing))


def test_every_grant_was_called_or_is_listed_with_its_reason():
    seen = called()
    unused = {(role, action) for role, actions in granted().items() for action in actions
              if action not in seen.get(role, {})}
    unexplained = unused - set(UNCALLED)
    assert not unexplained, "granted and never called: remove it, or list it in UNCALLED with why:\n" + \
        "\n".join(f"  {role}: {action}" for role, action in sorted(unexplained))
    stale = set(UNCALLED) - unused
    assert not stale, "listed in UNCALLED but called (or no longer granted): take it off the list:\n" + \
        "\n".join(f"  {role}: {action}" for role, action in sorted(stale))
