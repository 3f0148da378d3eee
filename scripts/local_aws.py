"""The local stack shared by the demo and the Python test suite.

`LocalAws.start()` launches scripts/moto_server.py on a free loopback port,
`provision()` creates the managed bucket (one log object per org), the registry
bucket and a user standing in for the functions' execution role, and returns
the environment the binaries run with. `enforce_credentials()` turns on moto's
credential checks, after which only live keys are accepted.
`deploy_member_account(account)` deploys member-account.yaml's role into a member
account through its OrganizationAccountAccessRole (as tests/common/mod.rs's
`Stack::with_members` does); `member_env(accounts)` is the environment that names
those roles (MEMBER_ACCOUNT_ROLES, MEMBER_ROLE_EXTERNAL_ID).
"""
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cfn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
TARGET = ROOT / "target" / "debug"
REGION = "us-east-1"
REGISTRY_BUCKET = "registry"
MANAGED_BUCKET = "logs"
LOG_KEY = "2026-11-22.log"
HOME_ACCOUNT = "123456789012"  # moto's default account: the home account
MEMBER_ROLE = "s3-key-rotation-member"  # member-account.yaml's RoleName default
ORGANIZATION_ROLE = "OrganizationAccountAccessRole"  # always assumable on scripts/moto_server.py
EXTERNAL_ID = "s3kr-test-external-id"  # the member roles' ExternalId (MEMBER_ROLE_EXTERNAL_ID)
STACK_NAME = "s3-key-rotation"  # the home stack's name (member-account.yaml's HomeStackName default)
OPERATOR = "operator"  # the user provision() makes: the operator's CLI and the tests' own look at AWS
ADMINISTRATOR = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def member_role_arn(account):
    return f"arn:aws:iam::{account}:role/{MEMBER_ROLE}"


def member_env(accounts):
    """The functions' (and the CLI's) variables naming the member accounts' roles."""
    return {"MEMBER_ACCOUNT_ROLES": ",".join(member_role_arn(a) for a in accounts),
            "MEMBER_ROLE_EXTERNAL_ID": EXTERNAL_ID}


class LocalAws:
    def __init__(self, proc, port):
        self.proc = proc
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._clients = {}
        self._clients_lock = threading.Lock()  # boto3 builds clients one thread at a time

    @classmethod
    def start(cls):
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "moto_server.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            proc.kill()
            raise RuntimeError(f"the local AWS endpoint did not start: {line!r}")
        return cls(proc, int(line.split()[1]))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def client(self, service, key=("test", "test"), endpoint=None, attempts=2, timeout=60):
        """A boto3 client signed with `key` (id, secret[, session token]), of this endpoint (or another
        one in front of it), making at most `attempts` attempts (standard retry mode)
        that each wait `timeout` seconds for an answer; reused for the same arguments."""
        args = (service, key, endpoint, attempts, timeout)
        with self._clients_lock:
            if args not in self._clients:
                self._clients[args] = boto3.client(
                    service, endpoint_url=endpoint or self.endpoint, region_name=REGION,
                    aws_access_key_id=key[0], aws_secret_access_key=key[1],
                    aws_session_token=key[2] if len(key) > 2 else None,
                    config=Config(s3={"addressing_style": "path"}, read_timeout=timeout,
                                  retries={"total_max_attempts": attempts, "mode": "standard"}),
                )
            return self._clients[args]

    def provision(self, orgs):
        """Buckets, one log object per org and an operator who may do anything (the operator's CLI,
        and the test looking at what the functions did); returns the operator's environment. The
        functions run under their template roles: `function_credentials(env)`."""
        s3 = self.client("s3")
        for bucket in (REGISTRY_BUCKET, MANAGED_BUCKET):
            s3.create_bucket(Bucket=bucket)
        for org in orgs:
            s3.put_object(Bucket=MANAGED_BUCKET, Key=f"{org}/{LOG_KEY}", Body=f"log lines of org {org}\n".encode())
        iam = self.client("iam")
        iam.create_user(UserName=OPERATOR)
        iam.put_user_policy(UserName=OPERATOR, PolicyName="administrator", PolicyDocument=json.dumps(ADMINISTRATOR))
        role_key = iam.create_access_key(UserName=OPERATOR)["AccessKey"]
        boundary = home_boundary(self, ("test", "test"))
        return {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", "/tmp"),
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": role_key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": role_key["SecretAccessKey"],
            "AWS_EC2_METADATA_DISABLED": "true",
            "REGISTRY_BUCKET": REGISTRY_BUCKET,
            "MANAGED_BUCKET": MANAGED_BUCKET,
            "ORG_USER_BOUNDARY": boundary,
        }

    def deploy_member_account(self, account, key, external_id=EXTERNAL_ID):
        """Deploys member-account.yaml into `account` as an operator does through the AWS
        Organizations role: each resource (a role), its trust policy and inline policies
        resolved with the stack's parameters (HomeAccountId: the home account, ExternalId:
        `external_id`, the others' defaults). The Organizations role may do anything (as AWS
        gives it AdministratorAccess; scripts/moto_server.py), so that a test can still look
        into the account once credentials are enforced (`organization_key`). `key`: the operator's,
        who deploys it and whom its OperatorPrincipals name."""
        template = cfn.load(ROOT / "member-account.yaml")
        iam = self.client("iam", self.organization_key(account, key))
        operator = self.client("sts", key).get_caller_identity()["Arn"]
        values = cfn.parameters(template, {"HomeAccountId": HOME_ACCOUNT, "ExternalId": external_id,
                                           "ManagedBucketName": MANAGED_BUCKET, "OperatorPrincipals": operator})
        values.update({"AWS::Partition": "aws", "AWS::AccountId": account, "AWS::Region": REGION})
        deploy_resources(iam, template, values, account)

    def organization_key(self, account, key):
        """Credentials (id, secret, token) of `account`'s OrganizationAccountAccessRole, assumed with `key`."""
        credentials = self.client("sts", key).assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/{ORGANIZATION_ROLE}", RoleSessionName="local-aws")["Credentials"]
        return credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"]

    def function_credentials(self, env, parameters=None):
        """{logical id: environment} of each function of template.yaml: the credentials of a role
        holding exactly the function's template statements (its `Policies`, resolved with the
        template `parameters` the stack is deployed with: by default, those the functions'
        variables in `env` come from), assumed with the operator's key of `env`. A role is made
        once per set of statements; works before and after `enforce_credentials()`."""
        key = (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        parameters = parameters_from_env(env) if parameters is None else parameters
        return {name: {"AWS_ACCESS_KEY_ID": k[0], "AWS_SECRET_ACCESS_KEY": k[1], "AWS_SESSION_TOKEN": k[2]}
                for name, k in function_roles(self, key, parameters).items()}

    def enforce_credentials(self):
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).read()

    def can_read(self, key, org):
        """Whether an access key (id, secret) reads the org's log object in the managed bucket."""
        try:
            self.client("s3", key).get_object(Bucket=MANAGED_BUCKET, Key=f"{org}/{LOG_KEY}")
            return True
        except Exception:
            return False


FUNCTION_ROLE_SESSION_SECONDS = 43200  # a test's stack lives for minutes; the credentials outlive it


def deploy_resources(iam, template, values, account):
    """Creates a template's IAM resources (managed policies first, then roles) with `iam`, as
    CloudFormation does; `values` gets each resource's `Ref` (a policy's ARN, a role's name)."""
    conditions = template.get("Conditions", {})
    resources = template["Resources"]
    for name, resource in resources.items():
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            policy_name = cfn.resolve(resource["Properties"].get("ManagedPolicyName", name), values, conditions)
            values[name] = f"arn:aws:iam::{account}:policy/{policy_name}"
    for name, resource in resources.items():
        if resource["Type"] == "AWS::IAM::Role":
            values[name] = cfn.resolve(resource["Properties"]["RoleName"], values, conditions)
    for name, resource in sorted(resources.items(), key=lambda r: r[1]["Type"] != "AWS::IAM::ManagedPolicy"):
        properties = cfn.resolve(resource["Properties"], values, conditions)
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            iam.create_policy(PolicyName=values[name].rsplit("/", 1)[1],
                              PolicyDocument=json.dumps(properties["PolicyDocument"]))
        else:
            assert resource["Type"] == "AWS::IAM::Role", f"{name}: only managed policies and roles are deployed here"
            role = properties["RoleName"]
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(properties["AssumeRolePolicyDocument"]))
            for policy in properties.get("Policies", []):
                iam.put_role_policy(RoleName=role, PolicyName=policy["PolicyName"],
                                    PolicyDocument=json.dumps(policy["PolicyDocument"]))


def home_boundary(aws, key):
    """Creates template.yaml's OrgUserBoundary in the home account; returns its ARN (ORG_USER_BOUNDARY)."""
    template = cfn.load(ROOT / "template.yaml")
    values = cfn.parameters(template, {"ManagedBucketName": MANAGED_BUCKET})
    values.update({"AWS::Partition": "aws", "AWS::AccountId": HOME_ACCOUNT, "AWS::Region": REGION})
    resource = template["Resources"]["OrgUserBoundary"]
    properties = cfn.resolve(resource["Properties"], values, template.get("Conditions", {}))
    created = aws.client("iam", key).create_policy(PolicyName=properties["ManagedPolicyName"],
                                                   PolicyDocument=json.dumps(properties["PolicyDocument"]))
    return created["Policy"]["Arn"]


def parameters_from_env(env, template=None):
    """The template parameters (and resources) that the functions' variables `env` come from:
    each variable `VAR: !Ref Parameter` (or `!Join [",", !Ref List]`) of a function's (or the
    Globals') environment set in `env`, each `VAR=${Parameter}` of the OperatorEnvironment
    output (the CLI's org users' settings, which no function reads), REGISTRY_BUCKET and
    SWEEP_QUEUE_URL as the stack's registry bucket and sweep queue."""
    template = template or cfn.load(ROOT / "template.yaml")
    given = {}
    environments = [template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})]
    environments += [resource["Properties"].get("Environment", {}).get("Variables", {})
                     for resource in template["Resources"].values()
                     if resource.get("Type") == "AWS::Serverless::Function"]
    for variables in environments:
        for var, expression in variables.items():
            if var not in env or not isinstance(expression, dict):
                continue
            if "Ref" in expression:
                given[expression["Ref"]] = env[var]
            elif "Fn::Join" in expression and isinstance(expression["Fn::Join"][1], dict):
                given[expression["Fn::Join"][1]["Ref"]] = env[var]
    operator = template.get("Outputs", {}).get("OperatorEnvironment", {}).get("Value", {}).get("Fn::Sub", "")
    for var, parameter in re.findall(r"([A-Z][A-Z0-9_]*)=\$\{([A-Za-z0-9]+)\}", operator):
        if var in env:
            given[parameter] = env[var]
    if env.get("SWEEP_QUEUE_URL"):
        given["SweepQueue"] = env["SWEEP_QUEUE_URL"]
    return given


def template_values(parameters, template):
    """What template.yaml's `Ref`s, `Sub`s and `GetAtt`s name on the local stack: `parameters`
    (template parameters, and the registry bucket and sweep queue by logical id), else the
    parameters' defaults; the pseudo parameters of the home account."""
    values = cfn.parameters(template, parameters)
    registry = parameters.get("RegistryBucket") or REGISTRY_BUCKET
    queue_url = parameters.get("SweepQueue") or f"http://127.0.0.1/{HOME_ACCOUNT}/sweep"
    values.update({
        "AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": HOME_ACCOUNT, "AWS::StackName": STACK_NAME,
        "RegistryBucket": registry, "RegistryBucket.Arn": f"arn:aws:s3:::{registry}",
        "SweepQueue": queue_url, "SweepQueue.Arn": f"arn:aws:sqs:{REGION}:{HOME_ACCOUNT}:{queue_url.rsplit('/', 1)[-1]}",
    })
    return values


def function_policies(parameters, template=None):
    """{logical id: [policy document]}: each function's template statements, resolved with `parameters`."""
    template = template or cfn.load(ROOT / "template.yaml")
    values = template_values(parameters, template)
    out = {}
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        policies = cfn.resolve(resource["Properties"].get("Policies", []), values, template.get("Conditions", {}))
        assert all(isinstance(p, dict) and "Statement" in p for p in policies), f"{name}: inline documents only"
        out[name] = policies
    return out


def function_role_paths(parameters, template=None):
    """{logical id: path} of each function's role (its `RolePath`, else `/`)."""
    template = template or cfn.load(ROOT / "template.yaml")
    values = template_values(parameters, template)
    return {name: cfn.resolve(resource["Properties"].get("RolePath", "/"), values, template.get("Conditions", {}))
            for name, resource in template["Resources"].items() if resource["Type"] == "AWS::Serverless::Function"}


def function_roles(aws, key, parameters):
    """{logical id: (id, secret, token)} of each function's role on `aws` (see LocalAws.function_credentials)."""
    import hashlib
    iam, sts = aws.client("iam", key), aws.client("sts", key)
    operator = sts.get_caller_identity()["Arn"]
    # SAM's trust policy (the Lambda service), and the operator standing in for the service.
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {
        "Service": "lambda.amazonaws.com", "AWS": operator}}]}
    out = {}
    paths = function_role_paths(parameters)
    for name, policies in function_policies(parameters).items():
        digest = hashlib.sha256(json.dumps(policies, sort_keys=True).encode()).hexdigest()[:8]
        role = f"{STACK_NAME}-{name}Role-{digest}"  # as SAM names it: {stack}-{Function}Role-{suffix}
        try:
            iam.create_role(RoleName=role, Path=paths[name], AssumeRolePolicyDocument=json.dumps(trust),
                            MaxSessionDuration=FUNCTION_ROLE_SESSION_SECONDS)
            for i, policy in enumerate(policies):
                iam.put_role_policy(RoleName=role, PolicyName=f"{name}Policy{i}", PolicyDocument=json.dumps(policy))
        except iam.exceptions.EntityAlreadyExistsException:
            pass
        credentials = sts.assume_role(RoleArn=f"arn:aws:iam::{HOME_ACCOUNT}:role{paths[name]}{role}", RoleSessionName=name,
                                      DurationSeconds=FUNCTION_ROLE_SESSION_SECONDS)["Credentials"]
        out[name] = (credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"])
    return out


def cli(env, *args, capture=False):
    """Runs the operator CLI built by `cargo build --bins`."""
    return subprocess.run([str(TARGET / "s3-key-rotation"), *args], env=env, check=True,
                          capture_output=capture, text=True)


def main():
    """For the Rust test harness (tests/common/mod.rs), on a running endpoint:
    `local_aws.py function-credentials PORT` reads the functions' environment (a JSON
    object) on stdin and prints `function_credentials` as JSON;
    `local_aws.py home-boundary PORT` creates the org users' boundary (before credentials are
    enforced) and prints its ARN; `local_aws.py deploy-member-account PORT ACCOUNT` deploys member-account.yaml there, as
    the operator whose environment it reads on stdin."""
    import argparse
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("command", choices=["function-credentials", "deploy-member-account", "home-boundary"])
    parser.add_argument("port", type=int)
    parser.add_argument("account", nargs="?")
    args = parser.parse_args()
    aws = LocalAws(None, args.port)
    if args.command == "home-boundary":
        print(home_boundary(aws, ("test", "test")))
    elif args.command == "function-credentials":
        print(json.dumps(aws.function_credentials(json.load(sys.stdin))))
    else:
        env = json.load(sys.stdin)
        aws.deploy_member_account(args.account, (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]))


if __name__ == "__main__":
    main()
