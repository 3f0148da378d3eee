"""rotate-key as Cisco Secure Access's official Python SDK (`secureaccess`) calls it:
`S3BucketKeyRotationApi.create_s3_bucket_key()`, a bodiless POST to
/admin/v2/iam/rotateKey with a bearer token, answered with the `KeyRotation` model.
Nothing in the client is changed but its host and token."""
from datetime import datetime

import pytest
from secure_access import ApiClient, Configuration, KeyRotation, S3BucketKeyRotationApi
from secure_access.exceptions import ApiException, ForbiddenException, NotFoundException, UnauthorizedException

from conftest import NOT_ENROLLED, ORG_A, ORG_B


def rotation_api(stack, token):
    return S3BucketKeyRotationApi(ApiClient(Configuration(host=stack.url, access_token=token)))


def header(headers, name):
    """The SDK hands response headers over as a plain dict: look them up as HTTP does, ignoring case."""
    return {k.lower(): v for k, v in headers.items()}.get(name.lower())


def test_first_rotation_is_a_key_rotation_whose_key_reads_the_orgs_prefix_only(stack):
    first = rotation_api(stack, stack.token(ORG_A)).create_s3_bucket_key()

    assert isinstance(first, KeyRotation)
    assert first.old_key_id == ""
    assert first.current_key_id.startswith("AKIA")
    assert len(first.secret_access_key) == 40
    assert isinstance(first.key_creation_date, datetime)
    assert stack.aws.can_read((first.current_key_id, first.secret_access_key), ORG_A)
    assert not stack.aws.can_read((first.current_key_id, first.secret_access_key), ORG_B)

    record = stack.status(ORG_A)
    assert record["current"]["accessKeyId"] == first.current_key_id


def test_second_rotation_names_the_first_key_which_stops_working(stack):
    api = rotation_api(stack, stack.token(ORG_A))
    first = api.create_s3_bucket_key()
    second = api.create_s3_bucket_key()

    assert second.old_key_id == first.current_key_id
    assert second.current_key_id != first.current_key_id
    assert second.key_creation_date >= first.key_creation_date
    assert stack.aws.can_read((second.current_key_id, second.secret_access_key), ORG_A)
    assert not stack.aws.can_read((first.current_key_id, first.secret_access_key), ORG_A)


def test_the_raw_answer_has_the_four_reference_fields_and_ours(stack):
    response = rotation_api(stack, stack.token(ORG_A)).create_s3_bucket_key_with_http_info()

    assert response.status_code == 200
    assert header(response.headers, "Cache-Control") == "no-store"
    body = response.raw_data.decode()
    for field in ("oldKeyId", "currentKeyId", "secretAccessKey", "keyCreationDate", "accessKeyId", "expiresAt"):
        assert f'"{field}"' in body


def test_an_org_without_key_info_gets_the_sdks_404_with_the_reference_text(stack):
    with pytest.raises(NotFoundException) as raised:
        rotation_api(stack, stack.token(NOT_ENROLLED)).create_s3_bucket_key()

    error = raised.value.data  # the SDK's S3Bucket404Error model
    assert raised.value.status == 404
    assert error.status == 404
    assert error.error == f"Not found IAM key info for orgId: {NOT_ENROLLED}"
    assert error.path == "/iam/rotate-key"
    assert isinstance(error.timestamp, datetime)


def test_a_token_without_the_admin_scope_gets_403_and_changes_nothing(stack):
    before = stack.status(ORG_B)
    with pytest.raises(ForbiddenException) as raised:
        rotation_api(stack, stack.token(ORG_B, scope="reports.read")).create_s3_bucket_key()
    assert raised.value.status == 403
    assert stack.status(ORG_B) == before


def test_a_token_from_another_issuer_or_none_at_all_gets_401(stack):
    from gateway import token

    forged = token("another-secret", "https://auth.example.test/", "s3-key-rotation", org=ORG_B)
    for bad in (forged, ""):
        with pytest.raises(UnauthorizedException):
            rotation_api(stack, bad).create_s3_bucket_key()


def test_past_the_rate_limit_the_sdk_raises_429_with_retry_after(stack):
    api = rotation_api(stack, stack.token(ORG_B))
    statuses = []
    for _ in range(6):
        try:
            api.create_s3_bucket_key()
            statuses.append(200)
        except ApiException as e:
            statuses.append(e.status)
            refused = e
    assert statuses == [200] * 5 + [429]  # ROTATIONS_PER_HOUR defaults to 5
    assert int(header(refused.headers, "Retry-After")) > 0
    assert '"status":429' in refused.body.replace(" ", "")


def test_no_secret_reaches_the_function_logs(stack):
    issued = rotation_api(stack, stack.token(ORG_A)).create_s3_bucket_key()
    logs = stack.gateway.logs()
    assert issued.current_key_id in logs  # the log does name the key it rotated
    assert issued.secret_access_key not in logs
