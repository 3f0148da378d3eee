"""The stack the SDK tests drive: the local AWS endpoint, two enrolled orgs and
the functions of template.yaml behind the API Gateway stand-in.

Run by scripts/test.sh after `cargo build --bins` (the binaries under test are
target/debug/rotate-key and target/debug/rotation-policy).
"""
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from gateway import Deployment, Gateway, token  # noqa: E402
from local_aws import MANAGED_BUCKET, REGISTRY_BUCKET, ROOT, LocalAws, cli  # noqa: E402,F401

ORG_A = "1234567"
ORG_B = "7654321"
NOT_ENROLLED = "2468135"
ISSUER = "https://auth.example.test/"
AUDIENCE = "s3-key-rotation"
JWT_SECRET = "local-test-signing-secret-of-the-identity-provider"


class Stack:
    def __init__(self, aws, gateway, env):
        self.aws = aws
        self.gateway = gateway
        self.env = env
        self.url = gateway.url

    def token(self, org, scope="admin"):
        return token(JWT_SECRET, ISSUER, AUDIENCE, org=org, scope=scope)

    def status(self, org):
        import json
        return json.loads(cli(self.env, "status", "--org", org, "--json", capture=True).stdout)


@contextmanager
def running_stack(log_dir, orgs, enrolled, concurrency=1):
    """The local AWS endpoint with `orgs` provisioned and `enrolled` enrolled, and
    the functions behind the gateway (`concurrency` sandboxes per function)."""
    aws = LocalAws.start()
    gateway = None
    try:
        env = aws.provision(orgs)
        cli(env, "enroll", *[arg for org in enrolled for arg in ("--org", org)], capture=True)
        aws.enforce_credentials()
        deployment = Deployment({
            "RegistryBucket": REGISTRY_BUCKET,
            "ManagedBucketName": MANAGED_BUCKET,
            "JwtIssuer": ISSUER,
            "JwtAudience": AUDIENCE,
        })
        # Each function under its template role, credentials enforced.
        credentials = aws.function_credentials(env, deployment.parameters)
        gateway = Gateway(deployment, env, JWT_SECRET, log_dir, credentials=credentials, concurrency=concurrency)
        yield Stack(aws, gateway, env)
    finally:
        if gateway is not None:
            gateway.close()
        aws.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("function-logs"), [ORG_A, ORG_B, NOT_ENROLLED], [ORG_A, ORG_B]) as s:
        yield s
