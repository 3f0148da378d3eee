"""The permissions, decided as IAM decides them.

The local endpoint (moto, with scripts/moto_server.py) evaluates a trust's external id
and aws:PrincipalArn, but not `s3:prefix`, `events:source`, `iam:PermissionsBoundary`
or `kms:ViaService` conditions, permissions boundaries, KMS key policies or
cross-account resource policies. Here
an IAM policy evaluator (@cloud-copilot/iam-simulate, in tests/permissions/evaluator,
installed by scripts/tools.sh) decides requests against

- both templates resolved as CloudFormation resolves them (scripts/cfn.py), with
  two member accounts named by the home stack, and
- the documents the service writes at run time, built by the service's own code
  (examples/policy_documents.rs): each org user's inline policy, a vault secret's
  resource policy for its org's reader, the managed bucket's statement for the
  member accounts.

Each role may do what it must (rotate, sweep, enroll, read) and is refused the
nearest things it must not. Then each guarded grant is broken on a copy of the
documents (a condition dropped, a resource widened, a trust opened), and the
evaluation must catch every such mutation. One node process decides the whole batch.
"""
import copy
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import cfn  # noqa: E402
import local_aws  # noqa: E402

EVALUATOR = ROOT / "tests" / "permissions" / "evaluator"
HOME = local_aws.HOME_ACCOUNT
REGION = local_aws.REGION
MEMBERS = ("222222222222", "333333333333")  # the member accounts the home stack names
MEMBER = MEMBERS[0]
STRANGER = "444444444444"  # an account the stack does not name
READER_ACCOUNT = "210987654321"  # an org's own account, where its reader principal is
MANAGED = local_aws.MANAGED_BUCKET
REGISTRY = local_aws.REGISTRY_BUCKET
EXTERNAL_ID = local_aws.EXTERNAL_ID
OPERATOR = f"arn:aws:iam::{HOME}:role/operators"  # the member stacks' OperatorPrincipals
ORG, NEIGHBOUR, MEMBER_ORG = "1234567", "12345678", "7654321"  # NEIGHBOUR's id starts with ORG's
READER, OTHER_READER = (f"arn:aws:iam::{READER_ACCOUNT}:role/log-reader",
                        f"arn:aws:iam::{READER_ACCOUNT}:role/other-org-reader")
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
DENIED = "Denied"  # implicitly or explicitly

pytestmark = pytest.mark.skipif(not (EVALUATOR / "node_modules").exists(),
                                reason="the evaluator is not installed: run scripts/tools.sh")


def evaluator(request):
    out = subprocess.run(["node", str(EVALUATOR / "evaluate.mjs")], input=json.dumps(request), capture_output=True,
                         text=True, check=True, timeout=300)
    return json.loads(out.stdout)


# ---------------------------------------------------------------------------------------------
# The documents: the templates resolved, and what the service writes at run time.

def member_role_arn(account):
    return f"arn:aws:iam::{account}:role/{local_aws.MEMBER_ROLE}"


def enrollment_role_arn(account):
    return f"arn:aws:iam::{account}:role/s3-key-rotation-enrollment"


def home_template():
    template = cfn.load(ROOT / "template.yaml")
    parameters = {"ManagedBucketName": MANAGED, "MemberRoleExternalId": EXTERNAL_ID,
                  "MemberAccountRoles": ",".join(member_role_arn(a) for a in MEMBERS)}
    values = local_aws.template_values(parameters, template)
    conditions = template.get("Conditions", {})
    resources = template["Resources"]
    boundary = cfn.resolve(resources["OrgUserBoundary"]["Properties"], values, conditions)
    values["OrgUserBoundary"] = f"arn:aws:iam::{HOME}:policy/{boundary['ManagedPolicyName']}"
    roles = {}
    for name, resource in resources.items():
        if resource["Type"] == "AWS::Serverless::Function":
            path = cfn.resolve(resource["Properties"].get("RolePath", "/"), values, conditions)
            # As SAM names a function's role: {stack}-{Function}Role-{random suffix}.
            roles[name] = f"arn:aws:iam::{HOME}:role{path}{local_aws.STACK_NAME}-{name}Role-AbCdEf123456"
            values[f"{name}Role.Arn"] = roles[name]
    values["VaultKey.Arn"] = f"arn:aws:kms:{REGION}:{HOME}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    values["NotificationsRule.Arn"] = f"arn:aws:events:{REGION}:{HOME}:rule/s3-key-rotation-NotificationsRule-AbCdEf"
    for queue in ("NotificationsQueue", "NotificationsDeadLetterQueue"):
        values[queue] = f"https://sqs.{REGION}.amazonaws.com/{HOME}/s3-key-rotation-{queue}-AbCdEf"
        values[f"{queue}.Arn"] = f"arn:aws:sqs:{REGION}:{HOME}:s3-key-rotation-{queue}-AbCdEf"
    # The service's settings as deployed: each function's environment, and the operator
    # CLI's org users' settings (the stack's OperatorEnvironment output, VAR=value pairs).
    env = {}
    for resource in resources.values():
        if resource["Type"] == "AWS::Serverless::Function":
            env.update(cfn.resolve(resource["Properties"].get("Environment", {}).get("Variables", {}), values,
                                   conditions))
    operator = cfn.resolve(template["Outputs"]["OperatorEnvironment"]["Value"], values, conditions)
    env.update(pair.split("=", 1) for pair in operator.split())
    return {
        "parameters": parameters, "values": values, "roles": roles, "env": env,
        "functions": local_aws.function_policies(parameters, template),
        "boundary": boundary["PolicyDocument"],
        "enrollment": cfn.resolve(resources["EnrollmentPolicy"]["Properties"], values, conditions)["PolicyDocument"],
        "vault_key": cfn.resolve(resources["VaultKey"]["Properties"], values, conditions)["KeyPolicy"],
        "registry_bucket": cfn.resolve(resources["RegistryBucketPolicy"]["Properties"], values,
                                       conditions)["PolicyDocument"],
        "queues": {queue: cfn.resolve(resources[f"{queue}Policy"]["Properties"], values, conditions)["PolicyDocument"]
                   for queue in ("NotificationsQueue", "NotificationsDeadLetterQueue")},
    }


def member_template(account):
    template = cfn.load(ROOT / "member-account.yaml")
    values = cfn.parameters(template, {"HomeAccountId": HOME, "ExternalId": EXTERNAL_ID,
                                       "ManagedBucketName": MANAGED, "OperatorPrincipals": OPERATOR})
    values.update({"AWS::Partition": "aws", "AWS::AccountId": account, "AWS::Region": REGION})
    conditions = template.get("Conditions", {})
    resources = template["Resources"]
    boundary = cfn.resolve(resources["OrgUserBoundary"]["Properties"], values, conditions)
    values["OrgUserBoundary"] = f"arn:aws:iam::{account}:policy/{boundary['ManagedPolicyName']}"
    runtime = cfn.resolve(resources["MemberRole"]["Properties"], values, conditions)
    enrollment = cfn.resolve(resources["EnrollmentRole"]["Properties"], values, conditions)
    return {
        "boundary_arn": values["OrgUserBoundary"], "boundary": boundary["PolicyDocument"],
        "runtime_trust": runtime["AssumeRolePolicyDocument"], "runtime": runtime["Policies"][0]["PolicyDocument"],
        "enrollment_trust": enrollment["AssumeRolePolicyDocument"],
        "enrollment": enrollment["Policies"][0]["PolicyDocument"],
    }


def runtime_documents(env):
    """What the service writes, from its own code (examples/policy_documents.rs), for the
    functions' variables `env` (the template's, resolved)."""
    request = {"env": {k: str(v) for k, v in env.items()}, "orgs": [ORG, NEIGHBOUR, MEMBER_ORG],
               "readers": [READER, OTHER_READER]}
    out = subprocess.run(["cargo", "run", "--quiet", "--locked", "--example", "policy_documents"], cwd=ROOT,
                         input=json.dumps(request), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@functools.cache
def world():
    """The documents every case is decided against, by name (a mutation changes a copy)."""
    home = home_template()
    member = member_template(MEMBER)
    written = runtime_documents(home["env"])
    docs = {f"function:{name}": policies for name, policies in home["functions"].items()}
    docs.update({
        "home:boundary": home["boundary"], "home:enrollment": home["enrollment"], "vault:key": home["vault_key"],
        "member:boundary": member["boundary"], "member:runtime": member["runtime"],
        "member:runtime-trust": member["runtime_trust"], "member:enrollment": member["enrollment"],
        "member:enrollment-trust": member["enrollment_trust"],
        "managed-bucket": {"Version": "2012-10-17", "Statement": [written["bucketStatement"]]},
        "registry-bucket": home["registry_bucket"],
    })
    docs.update({f"queue:{queue}": policy for queue, policy in home["queues"].items()})
    docs.update({f"user:{org}": policy for org, policy in written["userPolicies"].items()})
    docs.update({f"reader:{arn}": policy for arn, policy in written["readerPolicies"].items()})
    facts = {"roles": home["roles"], "home_boundary": home["values"]["OrgUserBoundary"],
             "member_boundary": member["boundary_arn"], "env": home["env"],
             "rule": home["values"]["NotificationsRule.Arn"],
             "queues": {q: home["values"][f"{q}.Arn"] for q in ("NotificationsQueue", "NotificationsDeadLetterQueue")}}
    return docs, facts


# ---------------------------------------------------------------------------------------------
# Requests.

def simulation(principal, action, resource, *, account, identity=(), boundary=None, resource_policy=None,
               context=None, principal_arn=None):
    """A request of `principal` (a user's or a role's ARN; a role calls as one of its sessions)
    for `action` on `resource` in `account`. AWS puts aws:PrincipalArn (the role's ARN, with its
    path, for a role's session), aws:PrincipalAccount and aws:ResourceAccount in every request's context."""
    caller_account = principal.split(":")[4]
    session = principal
    if ":role/" in principal:
        session = f"arn:aws:sts::{caller_account}:assumed-role/{principal.rsplit('/', 1)[1]}/session"
    request_context = {"aws:PrincipalArn": principal_arn or principal, "aws:PrincipalAccount": caller_account,
                       "aws:ResourceAccount": account, **(context or {})}
    out = {"request": {"principal": session, "action": action,
                       "resource": {"resource": resource, "accountId": account}, "contextVariables": request_context},
           "identityPolicies": [{"name": f"policy{i}", "policy": p} for i, p in enumerate(identity)]}
    if boundary is not None:
        out["permissionBoundaryPolicies"] = [{"name": "boundary", "policy": boundary}]
    if resource_policy is not None:
        out["resourcePolicy"] = resource_policy
    return out


class Case:
    """`expected` ('Allowed' or DENIED) for the request `build(docs, facts)` makes."""

    def __init__(self, group, label, expected, build):
        self.group, self.label, self.expected, self.build = group, label, expected, build

    def holds(self, result):
        outcome = result["result"]
        assert outcome != "Error", f"{self.label}: the evaluator refused the request: {result['errors']}"
        assert not result.get("ignoredContextKeys"), \
            f"{self.label}: context keys IAM does not know for this request: {result['ignoredContextKeys']}"
        return outcome == self.expected or (self.expected == DENIED and outcome.endswith("Denied"))


CASES = []


def case(group, label, expected):
    def register(build):
        CASES.append(Case(group, label, expected, build))
        return build
    return register


def cases(group, rows):
    """Several cases sharing one builder: rows of (label, expected, arguments)."""
    def register(build):
        for label, expected, *args in rows:
            CASES.append(Case(group, label, expected, lambda d, f, args=args: build(d, f, *args)))
        return build
    return register


def obj(bucket, key):
    return f"arn:aws:s3:::{bucket}/{key}"


def user_arn(account, name, path="/managed-s3/"):
    return f"arn:aws:iam::{account}:user{path}{name}"


def secret_arn(name):
    return f"arn:aws:secretsmanager:{REGION}:{HOME}:secret:{name}-AbCdEf"


VAULT_SECRET = secret_arn(f"s3-key-rotation/org-{ORG}")
OTHER_VAULT_SECRET = secret_arn(f"s3-key-rotation/org-{NEIGHBOUR}")
BUS = f"arn:aws:events:{REGION}:{HOME}:event-bus/default"
VIA_SECRETS_MANAGER = f"secretsmanager.{REGION}.amazonaws.com"


# --- An org user: its own prefix of the managed bucket, under its boundary. -----------------

def home_user(docs, facts, action, resource, org=ORG, context=None):
    return simulation(user_arn(HOME, f"org-{org}"), action, resource, account=HOME,
                      identity=[docs[f"user:{org}"]], boundary=docs["home:boundary"], context=context)


@cases("org user", [
    ("org 1234567 reads its own objects", "Allowed", "s3:GetObject", obj(MANAGED, f"{ORG}/2026-11-22.log"), None),
    ("org 1234567 lists its own prefix", "Allowed", "s3:ListBucket", f"arn:aws:s3:::{MANAGED}",
     {"s3:prefix": f"{ORG}/"}),
    ("org 1234567 lists inside its own prefix", "Allowed", "s3:ListBucket", f"arn:aws:s3:::{MANAGED}",
     {"s3:prefix": f"{ORG}/2026-"}),
    ("org 1234567 reads nothing of org 12345678", DENIED, "s3:GetObject", obj(MANAGED, f"{NEIGHBOUR}/2026-11-22.log"),
     None),
    ("org 1234567 lists nothing of org 12345678", DENIED, "s3:ListBucket", f"arn:aws:s3:::{MANAGED}",
     {"s3:prefix": f"{NEIGHBOUR}/"}),
    ("org 1234567 lists nothing with its prefix less its '/'", DENIED, "s3:ListBucket", f"arn:aws:s3:::{MANAGED}",
     {"s3:prefix": ORG}),
    ("org 1234567 lists not the whole bucket", DENIED, "s3:ListBucket", f"arn:aws:s3:::{MANAGED}", None),
    ("org 1234567 writes nothing in its prefix", DENIED, "s3:PutObject", obj(MANAGED, f"{ORG}/x.log"), None),
    ("org 1234567 reads no other bucket", DENIED, "s3:GetObject", obj(REGISTRY, f"orgs/{ORG}.json"), None),
])
def _org_user(docs, facts, action, resource, context):
    return home_user(docs, facts, action, resource, context=context)


@case("org user", "org 12345678 reads its own objects, not org 1234567's (the prefix ends with '/')", "Allowed")
def _neighbour_reads_own(docs, facts):
    return home_user(docs, facts, "s3:GetObject", obj(MANAGED, f"{NEIGHBOUR}/2026-11-22.log"), org=NEIGHBOUR)


@case("org user", "org 12345678 reads nothing of org 1234567", DENIED)
def _neighbour_reads_other(docs, facts):
    return home_user(docs, facts, "s3:GetObject", obj(MANAGED, f"{ORG}/2026-11-22.log"), org=NEIGHBOUR)


def member_user(docs, facts, action, resource, *, account=MEMBER, name=f"org-{MEMBER_ORG}", identity=None,
                context=None, path="/managed-s3/"):
    """A user of a member account reading the home account's managed bucket: its own policy, the
    member account's boundary, and the bucket's statement for the member accounts."""
    return simulation(user_arn(account, name, path), action, resource, account=HOME,
                      identity=[docs[f"user:{MEMBER_ORG}"]] if identity is None else identity,
                      boundary=docs["member:boundary"], resource_policy=docs["managed-bucket"], context=context)


@cases("member-account org user", [
    ("a member account's org user reads its own objects", "Allowed", {}, "s3:GetObject",
     obj(MANAGED, f"{MEMBER_ORG}/2026-11-22.log"), None),
    ("a member account's org user lists its own prefix", "Allowed", {}, "s3:ListBucket", f"arn:aws:s3:::{MANAGED}",
     {"s3:prefix": f"{MEMBER_ORG}/"}),
    ("a member account's org user reads no other org's objects", DENIED, {}, "s3:GetObject",
     obj(MANAGED, f"{ORG}/2026-11-22.log"), None),
    ("an org user of an account the stack does not name reads nothing", DENIED, {"account": STRANGER},
     "s3:GetObject", obj(MANAGED, f"{MEMBER_ORG}/2026-11-22.log"), None),
    ("a member account's other user, with an allow-all policy, reads nothing", DENIED,
     {"name": "admin", "path": "/", "identity": [ALLOW_ALL]}, "s3:GetObject",
     obj(MANAGED, f"{MEMBER_ORG}/2026-11-22.log"), None),
    ("a member account's user outside the path, with an allow-all policy, reads nothing", DENIED,
     {"name": f"org-{MEMBER_ORG}", "path": "/other/", "identity": [ALLOW_ALL]}, "s3:GetObject",
     obj(MANAGED, f"{MEMBER_ORG}/2026-11-22.log"), None),
])
def _member_user(docs, facts, where, action, resource, context):
    return member_user(docs, facts, action, resource, context=context, **where)


# --- The boundary: whatever policy a user holds, it reads the managed bucket and nothing else. -

WRITE_SERVICES = ("s3", "secretsmanager", "kms", "sqs", "events", "sts")
# Allowed to anyone whatever the policies say (AWS: "No permissions are required to perform this
# operation"), so no boundary refuses it.
ALWAYS_ALLOWED = {"sts:GetCallerIdentity"}


@functools.cache
def catalog():
    """Every IAM and STS action, and every write (Write, Permissions management, Tagging) of the
    services the project touches, each with a resource of its kind (the managed bucket's, for S3)."""
    listed = evaluator({"catalog": ["iam", *WRITE_SERVICES]})
    out = []
    for service, actions in listed.items():
        for a in actions:
            if service not in ("iam", "sts") and a["accessLevel"] in ("Read", "List") or a["action"] in ALWAYS_ALLOWED:
                continue
            resource = a["resource"].replace("${Partition}", "aws").replace("${Region}", REGION) \
                .replace("${BucketName}", MANAGED).replace("${ObjectName}", f"{ORG}/2026-11-22.log")
            while "${" in resource:
                start = resource.index("${")
                placeholder = resource[start:resource.index("}", start) + 1]
                resource = resource.replace(placeholder, "x" if placeholder != "${Account}" else "{account}")
            out.append((a["action"], resource))
    return out


@cases("boundary", [
    (f"{where} boundary: an org user with an allow-all policy {does}", DENIED, where, action, resource)
    for where in ("home", "member")
    for does, action, resource in (
        ("writes nothing in its own prefix", "s3:PutObject", obj(MANAGED, f"{ORG}/x.log")),
        ("creates no access key", "iam:CreateAccessKey", "arn:aws:iam::{account}:user/managed-s3/org-1234567"),
        ("lifts no boundary", "iam:DeleteUserPermissionsBoundary", "arn:aws:iam::{account}:user/managed-s3/org-1234567"),
        ("reads no registry record", "s3:GetObject", obj(REGISTRY, f"orgs/{ORG}.json")),
    )
])
def _boundary_nearest(docs, facts, where, action, resource):
    account, key = (HOME, "home:boundary") if where == "home" else (MEMBER, "member:boundary")
    return simulation(user_arn(account, f"org-{ORG}"), action, resource.format(account=account), account=account,
                      identity=[ALLOW_ALL], boundary=docs[key])


def boundary_cases():
    """The sweep: every action of the catalog (these are left out of the mutation run, which the
    nearest cases above stand for)."""
    out = []
    for where, account, key in (("home", HOME, "home:boundary"), ("member", MEMBER, "member:boundary")):
        for action, resource in catalog():
            def build(docs, facts, action=action, resource=resource, account=account, key=key):
                return simulation(user_arn(account, f"org-{ORG}"), action, resource.format(account=account),
                                  account=account, identity=[ALLOW_ALL], boundary=docs[key])
            out.append(Case("boundary", f"{where} boundary refuses {action} to a user with an allow-all policy",
                            DENIED, build))
        for action, resource in (("s3:GetObject", obj(MANAGED, f"{NEIGHBOUR}/x.log")),
                                 ("s3:ListBucket", f"arn:aws:s3:::{MANAGED}")):
            def build(docs, facts, action=action, resource=resource, account=account, key=key):
                return simulation(user_arn(account, f"org-{ORG}"), action, resource, account=account,
                                  identity=[ALLOW_ALL], boundary=docs[key])
            out.append(Case("boundary", f"{where} boundary lets an allow-all user {action} the managed bucket",
                            "Allowed", build))
    return out


# --- Enrollment: users only under the boundary, never a way around it. ----------------------

def enrollment_request(docs, facts, where, action, user, context):
    if where == "member":
        account, policy, boundary = MEMBER, docs["member:enrollment"], facts["member_boundary"]
        principal = enrollment_role_arn(MEMBER)
    else:
        account, policy, boundary = HOME, docs["home:enrollment"], facts["home_boundary"]
        principal = OPERATOR
    context = {k: (boundary if v == "BOUNDARY" else v) for k, v in (context or {}).items()}
    return simulation(principal, action, user.format(account=account), account=account, identity=[policy],
                      context=context)


ORG_USER = "arn:aws:iam::{account}:user/managed-s3/org-1234567"
ENROLLMENT_ROWS = [
    ("creates an org user with the boundary", "Allowed", "iam:CreateUser", ORG_USER,
     {"iam:PermissionsBoundary": "BOUNDARY"}),
    ("writes an org user's policy under the boundary", "Allowed", "iam:PutUserPolicy", ORG_USER,
     {"iam:PermissionsBoundary": "BOUNDARY"}),
    ("puts the boundary on an adopted user", "Allowed", "iam:PutUserPermissionsBoundary", ORG_USER,
     {"iam:PermissionsBoundary": "BOUNDARY"}),
    ("tags an org user", "Allowed", "iam:TagUser", ORG_USER, None),
    ("creates no user without a boundary", DENIED, "iam:CreateUser", ORG_USER, None),
    ("creates no user under another boundary", DENIED, "iam:CreateUser", ORG_USER,
     {"iam:PermissionsBoundary": "arn:aws:iam::aws:policy/AdministratorAccess"}),
    ("writes no policy to a user without the boundary", DENIED, "iam:PutUserPolicy", ORG_USER, None),
    ("puts no other boundary", DENIED, "iam:PutUserPermissionsBoundary", ORG_USER,
     {"iam:PermissionsBoundary": "arn:aws:iam::aws:policy/AdministratorAccess"}),
    ("creates no user outside the path", DENIED, "iam:CreateUser", "arn:aws:iam::{account}:user/org-1234567",
     {"iam:PermissionsBoundary": "BOUNDARY"}),
    ("creates no user not named org-*", DENIED, "iam:CreateUser", "arn:aws:iam::{account}:user/managed-s3/admin",
     {"iam:PermissionsBoundary": "BOUNDARY"}),
    ("never removes the boundary", DENIED, "iam:DeleteUserPermissionsBoundary", ORG_USER,
     {"iam:PermissionsBoundary": "BOUNDARY"}),
    ("never attaches a policy", DENIED, "iam:AttachUserPolicy", ORG_USER,
     {"iam:PermissionsBoundary": "BOUNDARY", "iam:PolicyARN": "arn:aws:iam::aws:policy/AdministratorAccess"}),
    ("creates no access key", DENIED, "iam:CreateAccessKey", ORG_USER, None),
    ("creates no role", DENIED, "iam:CreateRole", "arn:aws:iam::{account}:role/managed-s3/org-1234567",
     {"iam:PermissionsBoundary": "BOUNDARY"}),
    ("writes no policy version", DENIED, "iam:CreatePolicyVersion",
     "arn:aws:iam::{account}:policy/s3-key-rotation-org-user-boundary", None),
]
for _where in ("member", "home"):
    cases(f"enrollment ({_where})", [(f"{_where} enrollment {label}", expected, _where, *args)
                                     for label, expected, *args in ENROLLMENT_ROWS])(enrollment_request)


@cases("enrollment (home)", [
    ("the operator assumes the enrollment role of a member account the stack names", "Allowed", MEMBER,
     "s3-key-rotation-enrollment"),
    ("the operator assumes the enrollment role of the other named member account", "Allowed", MEMBERS[1],
     "s3-key-rotation-enrollment"),
    ("the operator assumes no enrollment role in an account the stack does not name", DENIED, STRANGER,
     "s3-key-rotation-enrollment"),
    ("the operator's enrollment policy assumes no other role of a member account", DENIED, MEMBER, "admin"),
])
def _operator_assumes(docs, facts, account, role):
    # The target trusts the home account's operators (an account that trusts the home
    # account: only the operator's own policy can refuse it).
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{HOME}:root"},
                                                     "Action": "sts:AssumeRole"}]}
    return simulation(OPERATOR, "sts:AssumeRole", f"arn:aws:iam::{account}:role/{role}", account=account,
                      identity=[docs["home:enrollment"]], resource_policy=trust)


# --- The member runtime role: the keys of org users under the path, nothing else. ------------

@cases("member runtime role", [
    ("manages the keys of an org user", "Allowed", "iam:CreateAccessKey", user_arn(MEMBER, "org-7654321")),
    ("deletes an org user's keys", "Allowed", "iam:DeleteAccessKey", user_arn(MEMBER, "org-7654321")),
    ("asks a key's last use", "Allowed", "iam:GetAccessKeyLastUsed", user_arn(MEMBER, "org-7654321")),
    ("deletes an org user", "Allowed", "iam:DeleteUser", user_arn(MEMBER, "org-7654321")),
    ("manages no key of a user not named org-*", DENIED, "iam:CreateAccessKey", user_arn(MEMBER, "admin")),
    ("manages no key of an org-* user outside the path", DENIED, "iam:CreateAccessKey",
     user_arn(MEMBER, "org-7654321", "/")),
    ("manages no key of a user under another path", DENIED, "iam:CreateAccessKey",
     user_arn(MEMBER, "org-7654321", "/other/")),
    ("creates no user", DENIED, "iam:CreateUser", user_arn(MEMBER, "org-7654321")),
    ("writes no user policy", DENIED, "iam:PutUserPolicy", user_arn(MEMBER, "org-7654321")),
    ("attaches no policy", DENIED, "iam:AttachUserPolicy", user_arn(MEMBER, "org-7654321")),
    ("removes no boundary", DENIED, "iam:DeleteUserPermissionsBoundary", user_arn(MEMBER, "org-7654321")),
    ("creates no role", DENIED, "iam:CreateRole", f"arn:aws:iam::{MEMBER}:role/managed-s3/org-7654321"),
    ("writes no policy version", DENIED, "iam:CreatePolicyVersion",
     f"arn:aws:iam::{MEMBER}:policy/s3-key-rotation-org-user-boundary"),
])
def _member_runtime(docs, facts, action, resource):
    return simulation(member_role_arn(MEMBER), action, resource, account=MEMBER, identity=[docs["member:runtime"]])


# --- The trusts: each admits exactly its principals. -----------------------------------------

def assume(docs, facts, caller, trust_key, *, identity=None, external_id=EXTERNAL_ID, target=None):
    """`caller` (a function's logical id, or a role's ARN with an allow-all policy) assumes a member
    account's role, whose trust is `docs[trust_key]`."""
    if caller in facts["roles"]:
        principal, policies = facts["roles"][caller], docs[f"function:{caller}"]
    else:
        principal, policies = caller, [ALLOW_ALL]
    target = target or (member_role_arn(MEMBER) if trust_key == "member:runtime-trust" else enrollment_role_arn(MEMBER))
    context = {"sts:ExternalId": external_id} if external_id else {}
    return simulation(principal, "sts:AssumeRole", target, account=target.split(":")[4],
                      identity=policies if identity is None else identity, resource_policy=docs[trust_key],
                      context=context)


OTHER_STACK_ROLE = f"arn:aws:iam::{HOME}:role/s3-key-rotation-staging-RotateKeyFunctionRole-AbCdEf123456"
TRUST_ROWS = [
    ("runtime", "rotate-key assumes the runtime role", "Allowed", "RotateKeyFunction", {}),
    ("runtime", "sweep-worker assumes the runtime role", "Allowed", "SweepWorkerFunction", {}),
    ("runtime", "an operator assumes the runtime role", "Allowed", OPERATOR, {}),
    ("runtime", "the runtime role needs the external id", DENIED, "RotateKeyFunction", {"external_id": None}),
    ("runtime", "the runtime role refuses a wrong external id", DENIED, "SweepWorkerFunction",
     {"external_id": "guess"}),
    ("runtime", "rotation-policy's role (given sts:AssumeRole) may not assume the runtime role", DENIED,
     "RotationPolicyFunction", {"identity": [ALLOW_ALL]}),
    ("runtime", "scheduled-rotation's role (given sts:AssumeRole) may not assume the runtime role", DENIED,
     "ScheduledRotationFunction", {"identity": [ALLOW_ALL]}),
    ("runtime", "a role of another stack whose name starts with the home stack's may not assume it", DENIED,
     OTHER_STACK_ROLE, {}),
    ("runtime", "another role of the home account may not assume it", DENIED,
     f"arn:aws:iam::{HOME}:role/s3-key-rotation-admin", {}),
    ("runtime", "rotate-key's role name in another account may not assume it", DENIED,
     f"arn:aws:iam::{STRANGER}:role/s3-key-rotation-RotateKeyFunctionRole-AbCdEf123456", {}),
    ("runtime", "rotate-key assumes no runtime role of an account the stack does not name", DENIED,
     "RotateKeyFunction", {"target": member_role_arn(STRANGER)}),
    ("enrollment", "an operator assumes the enrollment role", "Allowed", OPERATOR, {}),
    ("enrollment", "the enrollment role needs the external id", DENIED, OPERATOR, {"external_id": None}),
    ("enrollment", "rotate-key (given sts:AssumeRole) may not assume the enrollment role", DENIED,
     "RotateKeyFunction", {"identity": [ALLOW_ALL]}),
    ("enrollment", "sweep-worker (given sts:AssumeRole) may not assume the enrollment role", DENIED,
     "SweepWorkerFunction", {"identity": [ALLOW_ALL]}),
    ("enrollment", "rotate-key's own policy assumes no enrollment role", DENIED, "RotateKeyFunction", {}),
    ("enrollment", "another role of the home account may not assume the enrollment role", DENIED,
     f"arn:aws:iam::{HOME}:role/s3-key-rotation-admin", {}),
]
cases("trusts", [(label, expected, f"member:{role}-trust", caller, options)
                 for role, label, expected, caller, options in TRUST_ROWS])(
    lambda docs, facts, key, caller, options: assume(docs, facts, caller, key, **options))


# --- The vault: its key decrypts for a reader only through Secrets Manager, only a vault ----
# --- secret; each reader reads its own org's secret and no other. ------------------------

def kms_decrypt(docs, facts, principal, *, via=VIA_SECRETS_MANAGER, secret=VAULT_SECRET, identity=None,
                action="kms:Decrypt"):
    context = {"kms:EncryptionContext:SecretARN": secret}
    if via:
        context["kms:ViaService"] = via
    if principal in facts["roles"]:
        principal, identity = facts["roles"][principal], identity or []
    return simulation(principal, action, facts["env"]["VAULT_KMS_KEY_ID"], account=HOME,
                      identity=[ALLOW_ALL] if identity is None else identity, resource_policy=docs["vault:key"],
                      context=context)


@cases("vault key", [
    ("a reader decrypts a vault secret through Secrets Manager", "Allowed", READER, {}),
    ("a reader decrypts nothing directly", DENIED, READER, {"via": None}),
    ("a reader decrypts nothing through another service", DENIED, READER, {"via": f"s3.{REGION}.amazonaws.com"}),
    ("a reader decrypts no secret outside the vault", DENIED, READER,
     {"secret": secret_arn("s3-key-rotation-other/org-1234567")}),
    ("a reader decrypts no secret of another account", DENIED, READER,
     {"secret": f"arn:aws:secretsmanager:{REGION}:{STRANGER}:secret:s3-key-rotation/org-1234567-AbCdEf"}),
    ("a reader encrypts nothing", DENIED, READER, {"action": "kms:GenerateDataKey"}),
    ("rotate-key encrypts through Secrets Manager", "Allowed", "RotateKeyFunction", {"action": "kms:GenerateDataKey"}),
    ("sweep-worker decrypts through Secrets Manager", "Allowed", "SweepWorkerFunction", {}),
    ("rotate-key decrypts nothing directly", DENIED, "RotateKeyFunction", {"via": None}),
    ("rotation-policy's role encrypts nothing", DENIED, "RotationPolicyFunction", {"action": "kms:GenerateDataKey"}),
])
def _vault_key(docs, facts, principal, options):
    return kms_decrypt(docs, facts, principal, **options)


def read_secret(docs, facts, reader, secret, policy_of):
    return simulation(reader, "secretsmanager:GetSecretValue", secret, account=HOME, identity=[ALLOW_ALL],
                      resource_policy=docs[f"reader:{policy_of}"])


@cases("vault readers", [
    ("a reader reads its own org's secret", "Allowed", READER, VAULT_SECRET, READER),
    ("a reader reads no other org's secret", DENIED, READER, OTHER_VAULT_SECRET, OTHER_READER),
    ("the other org's reader reads its own org's secret", "Allowed", OTHER_READER, OTHER_VAULT_SECRET, OTHER_READER),
    ("the other org's reader reads no secret but its own", DENIED, OTHER_READER, VAULT_SECRET, READER),
    ("another principal of the reader's account reads nothing", DENIED,
     f"arn:aws:iam::{READER_ACCOUNT}:role/admin", VAULT_SECRET, READER),
])
def _vault_reader(docs, facts, reader, secret, policy_of):
    return read_secret(docs, facts, reader, secret, policy_of)


@case("vault readers", "a reader writes nothing to its own org's secret", DENIED)
def _reader_writes(docs, facts):
    return simulation(READER, "secretsmanager:PutSecretValue", VAULT_SECRET, account=HOME, identity=[ALLOW_ALL],
                      resource_policy=docs[f"reader:{READER}"])


@case("vault readers", "rotation-policy reads no vault secret", DENIED)
def _rotation_policy_reads(docs, facts):
    return simulation(facts["roles"]["RotationPolicyFunction"], "secretsmanager:GetSecretValue", VAULT_SECRET,
                      account=HOME, identity=docs["function:RotationPolicyFunction"],
                      resource_policy=docs[f"reader:{READER}"])


# --- The functions' own statements. -----------------------------------------------------------

def function_request(docs, facts, function, action, resource, context=None):
    account = resource.split(":")[4] or HOME
    trust = None
    if action == "sts:AssumeRole":
        # A role that trusts the home account: only the function's own policy can refuse it.
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{HOME}:root"}, "Action": "sts:AssumeRole"}]}
    return simulation(facts["roles"][function], action, resource, account=account,
                      identity=docs[f"function:{function}"], resource_policy=trust, context=context)


REGISTRY_ARN = f"arn:aws:s3:::{REGISTRY}"
FUNCTION_ROWS = [
    ("RotateKeyFunction", "rotate-key lists the orgs' records", "Allowed", "s3:ListBucket", REGISTRY_ARN,
     {"s3:prefix": f"orgs/{ORG}.json"}),
    ("RotateKeyFunction", "rotate-key lists nothing outside orgs/", DENIED, "s3:ListBucket", REGISTRY_ARN,
     {"s3:prefix": "audit/"}),
    ("RotateKeyFunction", "rotate-key lists not the whole registry", DENIED, "s3:ListBucket", REGISTRY_ARN, None),
    ("RotateKeyFunction", "rotate-key reads an org's record", "Allowed", "s3:GetObject",
     obj(REGISTRY, f"orgs/{ORG}.json"), None),
    ("RotateKeyFunction", "rotate-key appends to the audit trail", "Allowed", "s3:PutObject",
     obj(REGISTRY, f"audit/{ORG}/x.json"), None),
    ("RotateKeyFunction", "rotate-key reads no audit entry", DENIED, "s3:GetObject",
     obj(REGISTRY, f"audit/{ORG}/x.json"), None),
    ("RotateKeyFunction", "rotate-key creates an org user's key", "Allowed", "iam:CreateAccessKey",
     user_arn(HOME, f"org-{ORG}"), None),
    ("RotateKeyFunction", "rotate-key creates no key of another user", DENIED, "iam:CreateAccessKey",
     user_arn(HOME, "admin", "/"), None),
    ("RotateKeyFunction", "rotate-key creates no user", DENIED, "iam:CreateUser", user_arn(HOME, f"org-{ORG}"),
     {"iam:PermissionsBoundary": f"arn:aws:iam::{HOME}:policy/s3-key-rotation-org-user-boundary"}),
    ("RotateKeyFunction", "rotate-key assumes a named member account's runtime role", "Allowed", "sts:AssumeRole",
     member_role_arn(MEMBER), None),
    ("RotateKeyFunction", "rotate-key assumes no runtime role of an account not named", DENIED, "sts:AssumeRole",
     member_role_arn(STRANGER), None),
    ("RotateKeyFunction", "rotate-key assumes no enrollment role", DENIED, "sts:AssumeRole",
     enrollment_role_arn(MEMBER), None),
    ("RotateKeyFunction", "rotate-key writes a vault secret", "Allowed", "secretsmanager:PutSecretValue",
     VAULT_SECRET, None),
    ("RotateKeyFunction", "rotate-key writes no other secret", DENIED, "secretsmanager:PutSecretValue",
     secret_arn("database-password"), None),
    ("RotateKeyFunction", "rotate-key deletes no secret", DENIED, "secretsmanager:DeleteSecret", VAULT_SECRET, None),
    ("RotationPolicyFunction", "rotation-policy writes an org's record", "Allowed", "s3:PutObject",
     obj(REGISTRY, f"orgs/{ORG}.json"), None),
    ("RotationPolicyFunction", "rotation-policy lists nothing outside orgs/", DENIED, "s3:ListBucket", REGISTRY_ARN,
     {"s3:prefix": "sweep/"}),
    ("RotationPolicyFunction", "rotation-policy touches no IAM user", DENIED, "iam:CreateAccessKey",
     user_arn(HOME, f"org-{ORG}"), None),
    ("ScheduledRotationFunction", "scheduled-rotation lists the placement markers", "Allowed", "s3:ListBucket",
     REGISTRY_ARN, {"s3:prefix": "placement/222222222222/"}),
    ("ScheduledRotationFunction", "scheduled-rotation lists no audit trail", DENIED, "s3:ListBucket", REGISTRY_ARN,
     {"s3:prefix": "audit/"}),
    ("ScheduledRotationFunction", "scheduled-rotation writes no org record", DENIED, "s3:PutObject",
     obj(REGISTRY, f"orgs/{ORG}.json"), None),
    ("ScheduledRotationFunction", "scheduled-rotation assumes no member role", DENIED, "sts:AssumeRole",
     member_role_arn(MEMBER), None),
    ("SweepWorkerFunction", "sweep-worker deletes an org user", "Allowed", "iam:DeleteUser",
     user_arn(HOME, f"org-{ORG}"), None),
    ("SweepWorkerFunction", "sweep-worker creates no user", DENIED, "iam:CreateUser", user_arn(HOME, f"org-{ORG}"),
     None),
    ("SweepWorkerFunction", "sweep-worker writes no user policy", DENIED, "iam:PutUserPolicy",
     user_arn(HOME, f"org-{ORG}"), None),
    ("SweepWorkerFunction", "sweep-worker deletes a vault secret", "Allowed", "secretsmanager:DeleteSecret",
     VAULT_SECRET, None),
    ("SweepWorkerFunction", "sweep-worker lists no audit trail", DENIED, "s3:ListBucket", REGISTRY_ARN,
     {"s3:prefix": "audit/"}),
]
cases("functions", [(label, expected, function, action, resource, context)
                    for function, label, expected, action, resource, context in FUNCTION_ROWS])(function_request)


# --- PutEvents: only with the service's source in every entry. --------------------------------

@cases("notifications", [
    (f"{who} publishes the service's events", "Allowed", function, BUS, ["s3-key-rotation"])
    for who, function in (("rotate-key", "RotateKeyFunction"), ("sweep-worker", "SweepWorkerFunction"))
] + [
    (f"{who} publishes no batch with another source in it", DENIED, function, BUS, ["s3-key-rotation", "aws.iam"])
    for who, function in (("rotate-key", "RotateKeyFunction"), ("sweep-worker", "SweepWorkerFunction"))
] + [
    ("rotate-key publishes no event of another source", DENIED, "RotateKeyFunction", BUS, ["aws.iam"]),
    ("rotate-key publishes no event without a source", DENIED, "RotateKeyFunction", BUS, None),
    ("rotate-key publishes on no other bus", DENIED, "RotateKeyFunction",
     f"arn:aws:events:{REGION}:{HOME}:event-bus/other", ["s3-key-rotation"]),
    ("rotation-policy publishes nothing", DENIED, "RotationPolicyFunction", BUS, ["s3-key-rotation"]),
])
def _put_events(docs, facts, function, bus, sources):
    return function_request(docs, facts, function, "events:PutEvents", bus,
                            {"events:source": sources} if sources is not None else None)


# --- The registry only over TLS; the notification queues only from the service's rule. -------

@cases("registry and queues", [
    ("rotate-key reads a record over TLS", "Allowed", "true"),
    ("rotate-key reads no record over plain HTTP", DENIED, "false"),
])
def _registry_tls(docs, facts, secure):
    return simulation(facts["roles"]["RotateKeyFunction"], "s3:GetObject", obj(REGISTRY, f"orgs/{ORG}.json"),
                      account=HOME, identity=docs["function:RotateKeyFunction"], resource_policy=docs["registry-bucket"],
                      context={"aws:SecureTransport": secure})


@cases("registry and queues", [
    (f"EventBridge delivers to {queue} for the service's rule", "Allowed", queue, None)
    for queue in ("NotificationsQueue", "NotificationsDeadLetterQueue")
] + [
    (f"EventBridge delivers nothing to {queue} for another rule", DENIED, queue,
     f"arn:aws:events:{REGION}:{HOME}:rule/another-rule")
    for queue in ("NotificationsQueue", "NotificationsDeadLetterQueue")
])
def _queue_delivery(docs, facts, queue, rule):
    return {"request": {"principal": "events.amazonaws.com", "action": "sqs:SendMessage",
                        "resource": {"resource": facts["queues"][queue], "accountId": HOME},
                        "contextVariables": {"aws:SourceArn": rule or facts["rule"], "aws:SourceAccount": HOME}},
            "identityPolicies": [], "resourcePolicy": docs[f"queue:{queue}"]}


# ---------------------------------------------------------------------------------------------
# Mutations: each breaks one guarded grant on a copy of the documents.

def statement(docs, key, sid):
    """The statement `sid` of the document(s) `docs[key]`."""
    documents = docs[key] if isinstance(docs[key], list) else [docs[key]]
    found = [s for d in documents for s in d["Statement"] if s.get("Sid") == sid]
    assert len(found) == 1, f"{key}: no single statement {sid}"
    return found[0]


def drop_condition(key, sid, operator=None):
    def mutate(docs):
        s = statement(docs, key, sid)
        if operator is None:
            del s["Condition"]
        else:
            del s["Condition"][operator]
    return mutate


def set_field(key, sid, field, value):
    def mutate(docs):
        statement(docs, key, sid)[field] = value
    return mutate


def replace_condition(key, sid, condition):
    return set_field(key, sid, "Condition", condition)


def widen_user_policy(docs):
    s = statement(docs, f"user:{ORG}", "ReadOwnObjects")
    s["Resource"] = s["Resource"].rstrip("*").rstrip("/") + "*"


def drop_boundary(docs):
    docs["home:boundary"] = ALLOW_ALL
    docs["member:boundary"] = ALLOW_ALL


def bucket_principal_widened(docs):
    docs["managed-bucket"]["Statement"][0]["Condition"]["ArnLike"]["aws:PrincipalArn"] = [
        f"arn:aws:iam::{a}:*" for a in MEMBERS]


def trust_admits_every_home_role(key):
    def mutate(docs):
        docs[key]["Statement"][0]["Condition"]["ArnLike"]["aws:PrincipalArn"] = f"arn:aws:iam::{HOME}:role/*"
    return mutate


def trust_drops_principal_arn(key):
    def mutate(docs):
        del docs[key]["Statement"][0]["Condition"]["ArnLike"]
    return mutate


def trust_drops_external_id(key):
    def mutate(docs):
        del docs[key]["Statement"][0]["Condition"]["StringEquals"]
    return mutate


def assume_any_enrollment_role(docs):
    s = statement(docs, "home:enrollment", "MemberAccountEnrollmentRoles")
    s.pop("Condition", None)
    s["Resource"] = "arn:aws:iam::*:role/s3-key-rotation-enrollment"


def reader_policy_for_anyone(docs):
    docs[f"reader:{READER}"]["Statement"][0]["Principal"] = {"AWS": f"arn:aws:iam::{READER_ACCOUNT}:root"}


def each_function(mutation_of):
    def mutate(docs):
        for function in ("RotateKeyFunction", "SweepWorkerFunction"):
            mutation_of(f"function:{function}")(docs)
    return mutate


def any_member_role(docs):
    for function in ("RotateKeyFunction", "SweepWorkerFunction"):
        statement(docs, f"function:{function}", "MemberAccountRoles")["Resource"] = "arn:aws:iam::*:role/*"


def enrollment_deny_dropped_and_widened(key):
    def mutate(docs):
        document = docs[key]
        document["Statement"] = [s for s in document["Statement"] if s["Effect"] == "Allow"]
        statement(docs, key, "OrgUsers")["Action"] = "iam:*User*"
    return mutate


MUTATIONS = {
    "the org user's ListBucket without its s3:prefix condition": drop_condition(f"user:{ORG}", "ListOwnPrefix"),
    "the org user's objects widened past the prefix's '/'": widen_user_policy,
    "the org users' boundaries allowing everything": drop_boundary,
    "the member accounts' bucket statement for every principal of those accounts": bucket_principal_widened,
    "the member enrollment role creating users without the boundary condition":
        drop_condition("member:enrollment", "CreateAndGrantOnlyUnderTheBoundary"),
    "the home enrollment policy creating users without the boundary condition":
        drop_condition("home:enrollment", "CreateAndGrantOnlyUnderTheBoundary"),
    "the member enrollment role without its deny, its user rights widened":
        enrollment_deny_dropped_and_widened("member:enrollment"),
    "the home enrollment policy without its deny, its user rights widened":
        enrollment_deny_dropped_and_widened("home:enrollment"),
    "the home enrollment policy assuming the enrollment role in any account": assume_any_enrollment_role,
    "the member runtime role on every user": set_field("member:runtime", "OrgUserKeys", "Resource",
                                                       f"arn:aws:iam::{MEMBER}:user/*"),
    "the member runtime role with every IAM action": set_field("member:runtime", "OrgUserKeys", "Action", "iam:*"),
    "the runtime role's trust admitting every home role": trust_admits_every_home_role("member:runtime-trust"),
    "the runtime role's trust without aws:PrincipalArn": trust_drops_principal_arn("member:runtime-trust"),
    "the runtime role's trust without the external id": trust_drops_external_id("member:runtime-trust"),
    "the enrollment role's trust admitting every home role": trust_admits_every_home_role("member:enrollment-trust"),
    "the enrollment role's trust without the external id": trust_drops_external_id("member:enrollment-trust"),
    "the vault key's readers without kms:ViaService":
        drop_condition("vault:key", "ReadersDecryptTheirOwnSecretThroughSecretsManager", "StringEquals"),
    "the vault key's readers without the secret's encryption context":
        drop_condition("vault:key", "ReadersDecryptTheirOwnSecretThroughSecretsManager", "StringLike"),
    "the vault key's readers allowed every KMS action":
        set_field("vault:key", "ReadersDecryptTheirOwnSecretThroughSecretsManager", "Action", "kms:*"),
    "the functions' use of the vault key without kms:ViaService":
        drop_condition("vault:key", "FunctionsUseTheKeyThroughSecretsManager", "StringEquals"),
    "a secret readable by every principal of its reader's account": reader_policy_for_anyone,
    "the functions' ListBucket without its s3:prefix condition":
        each_function(lambda key: drop_condition(key, "RegistryLookupAnswersNotFound")
                      if key.endswith("RotateKeyFunction") else drop_condition(key, "RegistryListing")),
    "the functions' member roles widened to any role": any_member_role,
    "PutEvents without the Null guard": each_function(
        lambda key: drop_condition(key, "Notifications", "Null")),
    "PutEvents with ForAnyValue (one entry of the service's source enough)": each_function(
        lambda key: replace_condition(key, "Notifications", {
            "ForAnyValue:StringEquals": {"events:source": "s3-key-rotation"}})),
    "PutEvents with any source": each_function(lambda key: drop_condition(key, "Notifications")),
    "the registry over plain HTTP": lambda docs: docs["registry-bucket"]["Statement"].clear(),
    "the notification queues open to every rule": lambda docs: [
        drop_condition(f"queue:{queue}", "AllowTheNotificationsRule")(docs)
        for queue in ("NotificationsQueue", "NotificationsDeadLetterQueue")],
}


# ---------------------------------------------------------------------------------------------
# The runs.

def decide(docs, facts, selected):
    results = evaluator({"simulations": [c.build(docs, facts) for c in selected]})
    return [(c, r) for c, r in zip(selected, results)]


@functools.cache
def base_results():
    docs, facts = world()
    return decide(docs, facts, CASES + boundary_cases())


def failures(decided):
    return [f"  {c.group}: {c.label}: expected {c.expected}, evaluated {r['result']}"
            + (f" (allowed by {r['grants']})" if r["result"] == "Allowed" else "")
            for c, r in decided if not c.holds(r)]


GROUPS = sorted({c.group for c in CASES} | {"boundary"})


@pytest.mark.parametrize("group", GROUPS)
def test_each_role_may_do_what_it_must_and_not_the_nearest_things_it_must_not(group):
    decided = [(c, r) for c, r in base_results() if c.group == group]
    assert decided, f"no case in {group}"
    wrong = failures(decided)
    assert not wrong, f"{len(wrong)} of {len(decided)} evaluations wrong:\n" + "\n".join(wrong)


def test_the_boundary_sweep_covers_every_iam_action_and_the_writes():
    actions = {a for a, _ in catalog()}
    assert len([a for a in actions if a.startswith("iam:")]) > 150, "every IAM action"
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:PutBucketPolicy", "iam:CreateAccessKey",
                   "iam:DeleteUserPermissionsBoundary", "sts:AssumeRole", "secretsmanager:PutSecretValue",
                   "kms:Decrypt", "sqs:SendMessage", "events:PutEvents"):
        assert action in actions, action


def test_every_mutation_of_a_guarded_grant_is_caught():
    docs, facts = world()
    assert not failures(base_results()), "the unmutated documents must pass first"
    batch, spans = [], {}
    for name, mutate in MUTATIONS.items():
        mutated = copy.deepcopy(docs)
        mutate(mutated)
        start = len(batch)
        batch.extend(c.build(mutated, facts) for c in CASES)
        spans[name] = (start, len(batch))
    results = evaluator({"simulations": batch})
    survivors = []
    for name, (start, end) in spans.items():
        caught = [c.label for c, r in zip(CASES, results[start:end]) if not c.holds(r)]
        if not caught:
            survivors.append(name)
    assert not survivors, "mutations no evaluation catches:\n" + "\n".join(f"  {s}" for s in survivors)
