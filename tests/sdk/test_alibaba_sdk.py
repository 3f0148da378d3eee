"""rotation-policy as Alibaba Cloud's official KMS SDK (`alibabacloud-kms20160120`)
calls it: `POST /` with the action in `x-acs-action`, parameters in the query
string, booleans as True/False, the token as the SDK's bearer credential.
Nothing in the client is changed but its endpoint, protocol and token."""
from datetime import datetime, timedelta, timezone

import pytest
from alibabacloud_kms20160120 import models as kms
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi import models as openapi
from alibabacloud_tea_openapi.exceptions import ClientException

from conftest import ORG_A, ORG_B

KEY_A = f"key-{ORG_A}"
KEY_B = f"key-{ORG_B}"


def kms_client(stack, token):
    return Client(openapi.Config(
        type="bearer", bearer_token=token,
        endpoint=stack.url.removeprefix("http://"), protocol="http", region_id="cn-hangzhou",
    ))


def parse(date):
    return datetime.strptime(date, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def kms_a(stack):
    client = kms_client(stack, stack.token(ORG_A))
    # The org's first key comes from its first manual rotation (Cisco-style API).
    import urllib.request
    request = urllib.request.Request(f"{stack.url}/iam/rotate-key", method="POST",
                                     headers={"Authorization": f"Bearer {stack.token(ORG_A)}"})
    assert urllib.request.urlopen(request, timeout=30).status == 200
    return client


def test_enable_then_describe_key_shows_the_policy(kms_a):
    answer = kms_a.update_rotation_policy(kms.UpdateRotationPolicyRequest(
        key_id=KEY_A, enable_automatic_rotation=True, rotation_interval="30d"))
    assert answer.status_code == 200
    assert answer.body.request_id

    meta = kms_a.describe_key(kms.DescribeKeyRequest(key_id=KEY_A)).body.key_metadata
    assert meta.key_id == KEY_A
    assert meta.key_state == "Enabled"
    assert meta.automatic_rotation == "Enabled"
    assert meta.rotation_interval == "2592000s"
    assert parse(meta.next_rotation_date) - parse(meta.last_rotation_date) == timedelta(days=30)
    assert meta.primary_key_version == "1"


@pytest.mark.parametrize("interval,seconds", [("720h", 2592000), ("604800s", 604800), ("365d", 31536000)])
def test_every_unit_is_accepted_and_reported_in_seconds(kms_a, interval, seconds):
    kms_a.update_rotation_policy(kms.UpdateRotationPolicyRequest(
        key_id=KEY_A, enable_automatic_rotation=True, rotation_interval=interval))
    meta = kms_a.describe_key(kms.DescribeKeyRequest(key_id=KEY_A)).body.key_metadata
    assert meta.rotation_interval == f"{seconds}s"


def test_disable_clears_the_next_rotation(kms_a):
    kms_a.update_rotation_policy(kms.UpdateRotationPolicyRequest(key_id=KEY_A, enable_automatic_rotation=False))
    meta = kms_a.describe_key(kms.DescribeKeyRequest(key_id=KEY_A)).body.key_metadata
    assert meta.automatic_rotation == "Disabled"
    assert meta.next_rotation_date is None


def test_list_key_versions_after_a_rotation(stack, kms_a):
    import urllib.request
    request = urllib.request.Request(f"{stack.url}/admin/v2/iam/rotateKey", method="POST",
                                     headers={"Authorization": f"Bearer {stack.token(ORG_A)}"})
    assert urllib.request.urlopen(request, timeout=30).status == 200

    body = kms_a.list_key_versions(kms.ListKeyVersionsRequest(key_id=KEY_A, page_number=1, page_size=10)).body
    versions = body.key_versions.key_version
    assert body.total_count == len(versions) >= 2
    assert body.page_number == 1 and body.page_size == 10
    assert [v.key_id for v in versions] == [KEY_A] * len(versions)
    ids = [int(v.key_version_id) for v in versions]
    assert ids == sorted(ids, reverse=True)  # newest first
    primary = kms_a.describe_key(kms.DescribeKeyRequest(key_id=KEY_A)).body.key_metadata.primary_key_version
    assert versions[0].key_version_id == primary
    assert all(parse(v.creation_date) for v in versions)

    page = kms_a.list_key_versions(kms.ListKeyVersionsRequest(key_id=KEY_A, page_number=2, page_size=1)).body
    assert [v.key_version_id for v in page.key_versions.key_version] == [versions[1].key_version_id]


@pytest.mark.parametrize("interval", ["6d", "366d", "30x", "thirty"])
def test_an_invalid_interval_is_the_sdks_invalid_parameter_400(kms_a, interval):
    with pytest.raises(ClientException) as raised:
        kms_a.update_rotation_policy(kms.UpdateRotationPolicyRequest(
            key_id=KEY_A, enable_automatic_rotation=True, rotation_interval=interval))
    assert raised.value.code == "InvalidParameter"
    assert raised.value.status_code == 400
    assert "RotationInterval" in raised.value.message
    assert raised.value.request_id


def test_another_orgs_key_is_forbidden_key_not_found_and_untouched(stack, kms_a):
    before = stack.status(ORG_B)
    calls = [
        lambda: kms_a.update_rotation_policy(kms.UpdateRotationPolicyRequest(
            key_id=KEY_B, enable_automatic_rotation=True, rotation_interval="30d")),
        lambda: kms_a.describe_key(kms.DescribeKeyRequest(key_id=KEY_B)),
        lambda: kms_a.list_key_versions(kms.ListKeyVersionsRequest(key_id=KEY_B)),
    ]
    for call in calls:
        with pytest.raises(ClientException) as raised:
            call()
        assert raised.value.code == "Forbidden.KeyNotFound"
        assert raised.value.status_code == 404
    assert stack.status(ORG_B) == before


def test_a_token_without_the_admin_scope_is_refused_by_the_gateway(stack):
    client = kms_client(stack, stack.token(ORG_A, scope="reports.read"))
    with pytest.raises(ClientException) as raised:
        client.describe_key(kms.DescribeKeyRequest(key_id=KEY_A))
    assert raised.value.status_code == 403
