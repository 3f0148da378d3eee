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

# Granted, not (always) called by the suite, and kept: (role, action) -> why.
_NOT_FOUND = ("S3 answers a missing object with 404 rather than 403 only to a caller that may list the bucket: "
              "the grant is used by S3's answer, not by a request of its own (the local endpoint answers 404 anyway)")
_TAGS = "{} with tags needs it; it is no request of its own"
_RESTORE = ("only on a secret scheduled for deletion, which moto 5.2.5 writes without refusing; the restore path is "
            "tested against AWS's own answers with aws-smithy-mocks (src/aws/vault.rs)")
_DELETION = ("the deletion of an org past its deletion window; cli_moto drives it through the operator's sweep, "
             "the wire matrices under this role when their scenarios reach it")
_MEMBER_DELETION = "the deletion of an org whose user lives in a member account (the same code as the home account's)"
_ADOPT_POLICIES = "enroll --adopt in a member account reports the user's other policies"
_OPERATOR_REMOVAL = "an org's user in a member account removed by the operator"
UNCALLED = {
    ("RotateKeyFunction", "s3:ListBucket"): _NOT_FOUND,
    ("RotationPolicyFunction", "s3:ListBucket"): _NOT_FOUND,
    ("RotateKeyFunction", "secretsmanager:TagResource"): _TAGS.format("CreateSecret"),
    ("SweepWorkerFunction", "secretsmanager:TagResource"): _TAGS.format("CreateSecret"),
    ("s3-key-rotation-enrollment", "iam:TagUser"): _TAGS.format("CreateUser"),
    ("RotateKeyFunction", "secretsmanager:RestoreSecret"): _RESTORE,
    ("SweepWorkerFunction", "secretsmanager:RestoreSecret"): _RESTORE,
    ("RotateKeyFunction", "iam:GetAccessKeyLastUsed"): "a takeover of a crashed rotation asks an unknown key's "
                                                        "last use (the wire matrices' faults reach it)",
    ("RotateKeyFunction", "iam:ListAccessKeys"): "a takeover of a crashed rotation lists the user's keys (the wire "
                                                  "matrices' SIGKILLs reach it)",
    ("SweepWorkerFunction", "secretsmanager:CreateSecret"): "an automatic rotation of an org whose vault secret does "
                                                            "not exist yet",
    ("SweepWorkerFunction", "iam:DeleteAccessKey"): _DELETION,
    ("SweepWorkerFunction", "iam:DeleteUser"): _DELETION,
    ("SweepWorkerFunction", "iam:DeleteUserPolicy"): _DELETION,
    ("SweepWorkerFunction", "s3:DeleteObject"): _DELETION,
    ("SweepWorkerFunction", "secretsmanager:DeleteSecret"): _DELETION,
    ("SweepWorkerFunction", "secretsmanager:DeleteResourcePolicy"): _DELETION,
    ("SweepWorkerFunction", "sqs:ChangeMessageVisibility"): "a slice stopped by the invocation's deadline comes back "
                                                            "at once (fanout_moto drives the deadline in process)",
    ("ScheduledRotationFunction", "s3:DeleteObject"): "the daily recount settles a contested placement marker "
                                                      "(two accounts claiming one org), which no test stages",
    ("s3-key-rotation-member", "iam:DeleteUser"): _MEMBER_DELETION,
    ("s3-key-rotation-member", "iam:DeleteUserPolicy"): _MEMBER_DELETION,
    ("s3-key-rotation-enrollment", "iam:ListAccessKeys"): "enroll finds the keys of a user that exists already "
                                                          "(refused, or adopted) in a member account",
    ("s3-key-rotation-enrollment", "iam:ListUserPolicies"): _ADOPT_POLICIES,
    ("s3-key-rotation-enrollment", "iam:ListAttachedUserPolicies"): _ADOPT_POLICIES,
    ("s3-key-rotation-enrollment", "iam:DeleteUser"): _OPERATOR_REMOVAL,
    ("s3-key-rotation-enrollment", "iam:DeleteUserPolicy"): _OPERATOR_REMOVAL,
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


def listed(pairs):
    """(role, action) pairs, one per line, for a failure's message."""
    return "\n".join(f"  {role}: {action}" for role, action in sorted(pairs))


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
    assert not missing, "actions the functions call that their template role does not grant:\n" + listed(missing)


def test_every_grant_was_called_or_is_listed_with_its_reason():
    seen, roles = called(), granted()
    unused = {(role, action) for role, actions in roles.items() for action in actions
              if action not in seen.get(role, {})}
    unexplained = unused - set(UNCALLED)
    assert not unexplained, "granted and never called: remove it, or list it in UNCALLED with why:\n" + \
        listed(unexplained)
    # A listed grant may be called after all (some paths are reached only by some runs of
    # the wire matrices); one no longer granted is a stale line.
    stale = {(role, action) for role, action in UNCALLED if action not in roles.get(role, set())}
    assert not stale, "listed in UNCALLED but no longer granted: take it off the list:\n" + listed(stale)
