"""Local AWS endpoint for s3-key-rotation: moto server on a loopback port.

Differences from a plain `moto_server`:
- it binds the port the OS picks (or --port) and prints `PORT <n>` on stdout
  once it accepts connections, so a test harness never races for a port;
- an IAM access key that is not `Active` no longer authenticates (moto 5.2.5
  accepts inactive keys), so "the old key stops working" can be observed when
  credential enforcement is on (`POST /moto-api/reset-auth`, body `0`).
- STS `AssumeRole` is refused (AccessDenied) unless the role exists in its
  account and its trust policy's `sts:ExternalId` (StringEquals) and
  `aws:PrincipalArn` (ArnLike, ArnEquals) conditions, if any, are met by the
  caller (moto 5.2.5 hands out credentials for any ARN). `OrganizationAccountAccessRole`
  stands for the role AWS Organizations creates in every member account, with
  AdministratorAccess: anyone may assume it and it may do anything; the tests
  assume it to deploy member-account.yaml into a member account.
- IAM calls on a user are authorized against the user's ARN (moto 5.2.5 uses
  `*`), so the member role's policy, scoped to the org users under the path,
  is evaluated as IAM does.
- A user's permissions boundary is kept: `CreateUser` with `PermissionsBoundary`
  and `PutUserPermissionsBoundary` (moto 5.2.5 drops the one and lacks the
  other) set it, and `GetUser` shows it. moto does not evaluate boundaries.
- Secrets Manager calls are authorized against the secret's ARN, EventBridge
  `PutEvents` against the event bus's ARN (moto 5.2.5 uses `*` for both, which a
  statement naming a resource never matches), and SQS batch calls by the single
  call's action (`SendMessageBatch` needs `sqs:SendMessage`), as AWS does.
  Policy conditions moto does not evaluate (all but a trust policy's
  `StringEquals`) are treated as met: the template tests check them as documents.
- With S3KR_CALLS_LOG set, what each assumed role was allowed or refused is
  appended to that file (see `CallLog`).
- SQS `SendMessageBatch` keeps each entry's message system attributes
  (`AWSTraceHeader`), as `SendMessage` does (moto 5.2.5 drops them in a batch).
- A Secrets Manager call that names a secret of another account by its ARN acts
  on that account's secret, if the secret's resource policy allows the caller
  the action (moto 5.2.5 looks the ARN up in the caller's own account and never
  reads resource policies); refused otherwise, with AccessDeniedException, as is
  a secret of another account that does not exist. The caller's own IAM policy
  is checked as for any call. Conditions are treated as met; the KMS key is not
  evaluated (a secret on the AWS-managed key is readable across accounts here).
  A Secrets Manager call refused for its signature or the caller's IAM policy is
  answered as Secrets Manager answers it, HTTP 400 with a JSON error
  (`AccessDeniedException`, `UnrecognizedClientException`), not moto's XML 403.
- `GetSecretValue` without `VersionId` or `VersionStage` answers the
  `AWSCURRENT` version, as AWS does (moto 5.2.5 answers the first version ever
  stored as current, whichever version the label has moved to since).
It exits when its standard input closes, so it never outlives its parent.

For the benchmarks it counts the AWS requests it serves and the time it spends
serving them: `GET /moto-api/bench/stats` answers {"requests": n, "busySeconds": s}.
It also names each request by its kind, in the order served:
`GET /moto-api/bench/requests?from=n` answers {"requests": [kind, ...]} from the
n-th request on (n as counted by the stats), a kind being e.g.
`IAM CreateAccessKey`, `S3 GetObject registry/orgs/…`,
`S3 PutObject registry/orgs/… (If-Match)` or `SecretsManager PutSecretValue`,
with ` → 412` appended when the answer was not a success.
"""
import argparse
import fnmatch
import io
import json
import os
import re
import sys
import threading
import time
import warnings
from urllib.parse import parse_qs, parse_qsl, unquote

from moto.iam import access_control
from moto.iam.models import iam_backends
from moto.events.responses import EventsHandler
from moto.core.responses import EmptyResult
from moto.iam.responses import IamResponse
from moto.core.exceptions import AccessDeniedError, InvalidClientTokenIdError, JsonRESTError, SignatureDoesNotMatchError
from moto.secretsmanager.models import SecretsManagerBackend, secretsmanager_backends
from moto.secretsmanager.responses import SecretsManagerResponse
from moto.sqs.models import SQSBackend
from moto.sts.exceptions import STSClientError
from moto.sts.models import STSBackend, sts_backends
from moto.sts.responses import TokenResponse as STSResponse
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

_original_init = access_control.IAMUserAccessKey.__init__


def _active_keys_only(self, account_id, partition, access_key_id, headers):
    _original_init(self, account_id, partition, access_key_id, headers)
    for user in self.backend.list_users("/", None, None):
        for key in user.access_keys:
            if key.access_key_id == access_key_id and key.status != "Active":
                raise access_control.CreateAccessKeyFailure(reason="InvalidId")


access_control.IAMUserAccessKey.__init__ = _active_keys_only


warnings.filterwarnings("ignore", message=r"Exception\(_AccessDenied\)")


class _AccessDenied(STSClientError):
    code = "AccessDenied"


_original_assume_role = STSBackend.assume_role
ORGANIZATION_ROLE = "OrganizationAccountAccessRole"


_CALLER = threading.local()  # the principal of the AssumeRole being served (set by _assume_role_caller)


def _principal_arn(arn):
    """aws:PrincipalArn of a caller: a role session's is its role's ARN, with the role's path
    (which the session's ARN leaves out)."""
    if ":assumed-role/" in arn:
        head, rest = arn.split(":assumed-role/", 1)
        name = rest.split("/")[0]
        try:
            return iam_backends[arn.split(":")[4]]["aws"].get_role(name).arn
        except Exception:
            return f"{head.replace(':sts:', ':iam:')}:role/{name}"
    return arn


def _condition_values(trust, operator, key):
    """The values a trust policy's statements give `key` under `operator` (one list per statement that has it)."""
    out = []
    for statement in trust.get("Statement", []):
        value = statement.get("Condition", {}).get(operator, {}).get(key)
        if value:
            out.append(value if isinstance(value, list) else [value])
    return out


def _assumable_roles_only(self, region_name, role_session_name, role_arn, policy, duration, external_id):
    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
    if not role_arn.endswith(f":role/{ORGANIZATION_ROLE}"):
        try:
            role = iam_backends[account]["aws"].get_role_by_arn(role_arn)
        except Exception:
            raise _AccessDenied(f"Not authorized to perform sts:AssumeRole on {role_arn}")
        trust = json.loads(unquote(role.assume_role_policy_document or "{}"))
        wanted = [w for ws in _condition_values(trust, "StringEquals", "sts:ExternalId") for w in ws]
        if wanted and external_id not in wanted:
            raise _AccessDenied(f"Not authorized to perform sts:AssumeRole on {role_arn} (external id)")
        caller = getattr(_CALLER, "arn", None)
        for patterns in _condition_values(trust, "ArnLike", "aws:PrincipalArn") + \
                _condition_values(trust, "ArnEquals", "aws:PrincipalArn"):
            if caller is not None and not any(fnmatch.fnmatchcase(caller, p) for p in patterns):
                raise _AccessDenied(f"User: {caller} is not authorized to perform sts:AssumeRole on {role_arn} "
                                    "(aws:PrincipalArn)")
    return _original_assume_role(self, region_name, role_session_name, role_arn, policy, duration, external_id)


_original_assume_role_response = STSResponse.assume_role


def _assume_role_caller(self):
    """Notes who calls AssumeRole, for the trust policy's aws:PrincipalArn (moto 5.2.5 ignores it)."""
    try:
        _, arn, _ = self.backend.get_caller_identity(self.get_access_key(), self.region)
        _CALLER.arn = _principal_arn(arn)
    except Exception:
        _CALLER.arn = None
    try:
        return _original_assume_role_response(self)
    finally:
        _CALLER.arn = None


STSResponse.assume_role = _assume_role_caller
STSBackend.assume_role = _assumable_roles_only


_original_iam_resource = IamResponse._determine_resource


def _user_resource(self):
    """The user an IAM call on a user acts on, `arn:…:user{path}{name}`, as IAM
    authorizes it. moto 5.2.5 authorizes those calls against `*`, which a
    statement whose Resource names users (member-account.yaml's) never matches."""
    names = self.data.get("UserName")
    if not names and self._get_action() == "GetAccessKeyLastUsed":
        # Named by its key only: IAM authorizes it against the key's user.
        key_id = (self.data.get("AccessKeyId") or [""])[0]
        owner = next((u for u in self.backend.users.values()
                      if any(k.access_key_id == key_id for k in u.access_keys)), None)
        if owner is not None:
            return f"arn:{self.partition}:iam::{self.current_account}:user{owner.path}{owner.name}"
    if not names:
        return _original_iam_resource(self)
    name = names[0]
    path = (self.data.get("Path") or ["/"])[0]
    if self._get_action() != "CreateUser":
        try:
            path = self.backend.get_user(name).path
        except Exception:
            path = "/"
    return f"arn:{self.partition}:iam::{self.current_account}:user{path}{name}"


IamResponse._determine_resource = _user_resource


def _boundary(arn):
    return {"PermissionsBoundaryType": "PermissionsBoundaryPolicy", "PermissionsBoundaryArn": arn}


_original_create_user = IamResponse.create_user


def _create_user_with_boundary(self):
    """CreateUser keeps its PermissionsBoundary (moto 5.2.5 drops it), which GetUser then shows."""
    result = _original_create_user(self)
    boundary = self._get_param("PermissionsBoundary")
    if boundary:
        self.backend.get_user(self._get_param("UserName")).permissions_boundary = _boundary(boundary)
    return result


def _put_user_permissions_boundary(self):
    """PutUserPermissionsBoundary (not in moto 5.2.5)."""
    self.backend.get_user(self._get_param("UserName")).permissions_boundary = \
        _boundary(self._get_param("PermissionsBoundary"))
    return EmptyResult()


IamResponse.create_user = _create_user_with_boundary
IamResponse.put_user_permissions_boundary = _put_user_permissions_boundary


def _secret_resource(self):
    """The secret a Secrets Manager call acts on, by its ARN, as Secrets Manager authorizes it
    (moto 5.2.5 uses `*`, which a statement naming the vault's secrets never matches). A secret
    that does not exist yet (CreateSecret) is `…:secret:{name}-??????`, the ARN it will have."""
    try:
        params = json.loads(self.body or "{}")
    except ValueError:
        return "*"
    secret = params.get("SecretId") or params.get("Name")
    if not secret:
        return "*"
    if secret.startswith("arn:"):
        return secret
    found = self.backend.secrets.get(secret)
    if found is not None:
        return found.arn
    return f"arn:{self.partition}:secretsmanager:{self.region}:{self.current_account}:secret:{secret}-??????"


SecretsManagerResponse._determine_resource = _secret_resource


class _SecretAccessDenied(JsonRESTError):
    code = 400

    def __init__(self, message):
        super().__init__("AccessDeniedException", message)


def _listed(value):
    return value if isinstance(value, list) else [value]


def _names_principal(statement, caller, caller_account):
    """Whether a resource policy statement's Principal names the caller (`caller`: its
    aws:PrincipalArn): `*`, the caller's account (its id or `…:root`), or its ARN."""
    principal = statement.get("Principal")
    if principal == "*":
        return True
    for named in _listed((principal or {}).get("AWS", []) if isinstance(principal, dict) else []):
        if named in ("*", caller_account, f"arn:aws:iam::{caller_account}:root") or named == caller:
            return True
    return False


def _resource_policy_allows(policy, caller, caller_account, action, secret_arn):
    """A secret's resource policy evaluated for one call: an explicit Deny wins, else an
    Allow is needed. Conditions are treated as met (see the module's docstring)."""
    try:
        statements = _listed(json.loads(policy or "{}").get("Statement", []))
    except (ValueError, AttributeError):
        return False
    allowed = False
    for statement in statements:
        actions = [a.lower() for a in _listed(statement.get("Action", []))]
        resources = _listed(statement.get("Resource", "*"))
        if not (_names_principal(statement, caller, caller_account)
                and any(fnmatch.fnmatchcase(action.lower(), a) for a in actions)
                and any(fnmatch.fnmatchcase(secret_arn, r) for r in resources)):
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def _secrets_backend(self):
    """The Secrets Manager backend a call acts on: the caller's account's, or (a secret of
    another account named by its ARN) the owner's, once the secret's resource policy allows
    the caller the action. moto 5.2.5 looks every ARN up in the caller's own account."""
    try:
        secret_id = json.loads(self.body or "{}").get("SecretId")
    except ValueError:
        secret_id = None
    owner = secret_id.split(":")[4] if isinstance(secret_id, str) and secret_id.startswith("arn:") \
        and secret_id.count(":") >= 6 else self.current_account
    if owner == self.current_account:
        return secretsmanager_backends[self.current_account][self.region]
    backend = secretsmanager_backends[owner][self.region]
    action = f"secretsmanager:{self._get_action()}"
    _, arn, _ = sts_backends[self.current_account][self.partition].get_caller_identity(
        self.get_access_key(), self.region)
    secret = backend.secrets.get(secret_id)
    if secret is None or not _resource_policy_allows(secret.policy, _principal_arn(arn), self.current_account,
                                                     action, secret.arn):
        raise _SecretAccessDenied(f"User: {arn} is not authorized to perform: {action} on resource: {secret_id} "
                                  "because no resource-based policy allows the " + action + " action")
    return backend


SecretsManagerResponse.backend = property(_secrets_backend)

# How Secrets Manager (a JSON protocol) answers a refused signature or identity: HTTP 400
# with a JSON `__type` (moto 5.2.5 answers 403 with the query protocols' XML, which an SDK
# cannot read a code from).
JSON_AUTH_ERRORS = {"AccessDenied": "AccessDeniedException", "InvalidClientTokenId": "UnrecognizedClientException",
                    "SignatureDoesNotMatch": "InvalidSignatureException"}
_original_secrets_authorize = SecretsManagerResponse._authenticate_and_authorize_normal_action


def _secrets_authorize_json(self, resource="*"):
    try:
        _original_secrets_authorize(self, resource)
    except (AccessDeniedError, InvalidClientTokenIdError, SignatureDoesNotMatchError) as e:
        message = e.message
        if isinstance(e, AccessDeniedError):
            action = message.rsplit(": ", 1)[-1]
            message += f" on resource: {resource} because no identity-based policy allows the {action} action"
        error = JsonRESTError(JSON_AUTH_ERRORS[e.error_type], message)
        error.code = 400
        raise error from e


SecretsManagerResponse._authenticate_and_authorize_normal_action = _secrets_authorize_json

_original_get_secret_value = SecretsManagerBackend.get_secret_value


def _current_by_default(self, secret_id, version_id, version_stage):
    """GetSecretValue without a version or a stage: AWSCURRENT's version, as AWS answers
    (moto 5.2.5 answers the version it first stored as current, wherever the label is now)."""
    if not version_id and not version_stage:
        version_stage = "AWSCURRENT"
    return _original_get_secret_value(self, secret_id, version_id, version_stage)


SecretsManagerBackend.get_secret_value = _current_by_default


def _event_bus_resource(self):
    """The event bus a PutEvents puts on (moto 5.2.5 uses `*`): EventBridge authorizes it
    against `arn:…:event-bus/{name}`, `default` when an entry names none."""
    if self._get_action() != "PutEvents":
        return "*"
    try:
        entries = json.loads(self.body or "{}").get("Entries") or [{}]
    except ValueError:
        return "*"
    bus = entries[0].get("EventBusName") or "default"
    if bus.startswith("arn:"):
        return bus
    return f"arn:{self.partition}:events:{self.region}:{self.current_account}:event-bus/{bus}"


EventsHandler._determine_resource = _event_bus_resource

# SQS authorizes a batch call by the single call's action (there is no sqs:SendMessageBatch).
SQS_BATCH_ACTIONS = {"sqs:SendMessageBatch": "sqs:SendMessage", "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
                     "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility"}
_original_request_init = access_control.IAMRequestBase.__init__


def _single_call_action(self, *args, **kwargs):
    _original_request_init(self, *args, **kwargs)
    self._action = SQS_BATCH_ACTIONS.get(self._action, self._action)


access_control.IAMRequestBase.__init__ = _single_call_action


PROBE_SESSION = "refusal-probe"


class CallLog:
    """What each role was allowed or refused, for the check that every function's role grants
    what the function calls and nothing it never calls (tests/permissions). With
    S3KR_CALLS_LOG set, each new (role, action, answer) is appended to that file as a JSON
    line: {"role": name, "account": id, "action": "s3:GetObject", "allowed": true}. Only
    assumed roles are logged (the functions' and the member accounts' roles), not users, and
    not a session named `refusal-probe`: a test that checks a role is refused something
    assumes it under that name."""

    def __init__(self, path):
        self.path = path
        self.seen = set()
        self.lock = threading.Lock()

    def record(self, request, allowed):
        arn = getattr(getattr(request, "_access_key", None), "arn", "") or ""
        if ":assumed-role/" not in arn or arn.endswith(f"/{PROBE_SESSION}"):
            return
        account, role = arn.split(":")[4], arn.split(":assumed-role/")[1].split("/")[0]
        entry = (role, account, request._action, allowed)
        with self.lock:
            if entry in self.seen:
                return
            self.seen.add(entry)
            line = json.dumps({"role": role, "account": account, "action": request._action, "allowed": allowed})
            # One write of the whole line to a file opened for appending: the servers of suites
            # running at once append to the same log without mixing their lines.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)


CALLS = CallLog(os.environ["S3KR_CALLS_LOG"]) if os.environ.get("S3KR_CALLS_LOG") else None
_original_check = access_control.IAMRequestBase.check_action_permitted


def _logged_check(self, resource):
    arn = getattr(getattr(self, "_access_key", None), "arn", "") or ""
    if f":assumed-role/{ORGANIZATION_ROLE}/" in arn:
        return  # AWS Organizations' role: AdministratorAccess in every member account
    try:
        _original_check(self, resource)
    except Exception:
        if CALLS is not None:
            CALLS.record(self, False)
        raise
    if CALLS is not None:
        CALLS.record(self, True)


access_control.IAMRequestBase.check_action_permitted = _logged_check


_original_send_message_batch = SQSBackend.send_message_batch


def _batch_keeps_system_attributes(self, queue_name, entries):
    """SendMessageBatch with each entry's `MessageSystemAttributes` (`AWSTraceHeader`, the
    trace the sender's span continues) kept on its message, as SQS keeps them; moto 5.2.5
    keeps them for SendMessage only."""
    messages, failed = _original_send_message_batch(self, queue_name, entries)
    by_id = {entry["Id"]: entry for entry in entries.values()}
    for message in messages:
        attributes = by_id.get(getattr(message, "user_id", None), {}).get("MessageSystemAttributes")
        if attributes:
            message.system_attributes = attributes
    return messages, failed


SQSBackend.send_message_batch = _batch_keeps_system_attributes


SERVICES = {"s3": "S3", "iam": "IAM", "secretsmanager": "SecretsManager", "events": "EventBridge",
            "sts": "STS", "sqs": "SQS"}
CREDENTIAL_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")


def _s3_operation(method, path, query, environ):
    """`GetObject registry/orgs/…`: the REST operation, the bucket and the key's prefix (an org id as {org})."""
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    params = parse_qs(query, keep_blank_values=True)
    if key:
        noun = "Object"
        first, slash, _ = key.partition("/")
        where = f"{bucket}/{'{org}' if first.isdigit() else first}/…" if slash else f"{bucket}/{key}"
    else:
        noun = "Bucket"
        prefix = params.get("prefix", [""])[0].split("/")[0]
        where = f"{bucket}/{'{org}' if prefix.isdigit() else prefix}/…" if prefix else bucket
    operation = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "HEAD": "Head", "POST": "Post"}.get(method, method)
    subresources = [k for k, v in params.items() if v == [""]]
    if method == "GET" and not key and not subresources:
        operation, noun = ("ListObjectsV2", "") if "list-type" in params else ("ListObjects", "")
    elif method == "PUT" and not key and not subresources:
        operation, noun = "CreateBucket", ""
    elif method == "PUT" and key and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
        operation, noun = "CopyObject", ""
    elif method == "POST" and "delete" in params:
        operation, noun = "DeleteObjects", ""
    elif subresources:
        noun += subresources[0][:1].upper() + subresources[0][1:]
    conditions = [name for name, header in (("If-Match", "HTTP_IF_MATCH"), ("If-None-Match", "HTTP_IF_NONE_MATCH"))
                  if environ.get(header)]
    return f"{operation}{noun} {where}" + (f" ({', '.join(conditions)})" if conditions else "")


def request_kind(environ):
    """Service and operation of a request (read before moto handles it; a form body is read and put back)."""
    match = CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = match.group(1) if match else ""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:  # JSON protocols: Secrets Manager, EventBridge, SQS
        return f"{SERVICES.get(service, service or target.split('.')[0])} {target.rsplit('.', 1)[-1]}"
    method, path, query = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
    if service == "s3":
        return f"S3 {_s3_operation(method, path, query, environ)}"
    action = dict(parse_qsl(query)).get("Action")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if action is None and length and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        action = dict(parse_qsl(body.decode("utf-8", "replace"))).get("Action")
    return f"{SERVICES.get(service, service or '?')} {action or f'{method} {path}'}"


class RequestStats:
    """WSGI middleware: counts requests, their service time and their kinds (not its own endpoints)."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.requests = 0
        self.busy = 0.0
        self.kinds = []  # the kind of each request, in the order their answers were complete

    @staticmethod
    def _json(start_response, value):
        body = json.dumps(value).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/moto-api/bench/stats":
            with self.lock:
                return self._json(start_response, {"requests": self.requests, "busySeconds": self.busy})
        if environ.get("PATH_INFO") == "/moto-api/bench/requests":
            start = int(dict(parse_qsl(environ.get("QUERY_STRING", ""))).get("from", 0))
            with self.lock:
                return self._json(start_response, {"requests": self.kinds[start:]})
        kind = request_kind(environ)
        status = []
        started = time.perf_counter()

        def record_status(line, headers, exc_info=None):
            status.append(line[:3])
            return start_response(line, headers, exc_info)

        try:
            return list(self.app(environ, record_status))
        finally:
            if not status or not status[-1].startswith("2"):
                kind += f" → {status[-1] if status else 'no answer'}"
            with self.lock:
                self.requests += 1
                self.busy += time.perf_counter() - started
                self.kinds.append(kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("the local stack listens on loopback only")
    server = make_server(
        args.host,
        args.port,
        RequestStats(DomainDispatcherApplication(create_backend_app)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"PORT {server.server_port}", flush=True)
    # Serve until the parent closes our stdin (or we are killed).
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    server.shutdown()


if __name__ == "__main__":
    main()
