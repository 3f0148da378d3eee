"""Pushes an org's current S3 access key into a consumer that keeps the key in its own
settings (a SIEM's S3 connector, say), each time the org's key is rotated.

Deploy it as a Lambda function (Python 3.11 or later, boto3 as the runtime has it) in the
org's own AWS account, whose execution role is the org's reader principal (the one
`s3-key-rotation enroll --reader-principal` granted), invoked by an EventBridge rule on the
bus the provider forwards the org's events to, with the pattern

    {"source": ["s3-key-rotation"], "detail-type": ["Bucket Key Rotated"], "detail": {"orgId": ["7654321"]}}

Environment:
  SECRET_ARN      the org's secret, as `s3-key-rotation status --org N` prints it
  CONSUMER_URL    the consumer's endpoint that takes a new key
  CONSUMER_TOKEN  the consumer's API token (better kept in a secret of its own)

`push` speaks an example API (PUT of {"accessKeyId", "secretAccessKey"} as JSON with a
bearer token): replace it with the call your consumer documents. The secret is never
logged or returned.
"""
import json
import os
import urllib.request

import boto3


def current_key(secrets, secret_arn):
    """The vault's current key: (access key id, secret access key)."""
    value = json.loads(secrets.get_secret_value(SecretId=secret_arn)["SecretString"])  # AWSCURRENT
    return value["accessKeyId"], value["secretAccessKey"]


def push(url, token, access_key_id, secret_access_key):
    """Hands the key to the consumer (an example API: adapt to yours)."""
    body = json.dumps({"accessKeyId": access_key_id, "secretAccessKey": secret_access_key}).encode()
    request = urllib.request.Request(url, data=body, method="PUT", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def handler(event, context=None):
    """A `Bucket Key Rotated` event: the vault's current key goes to the consumer. The vault
    is read rather than trusting the event (which never carries a secret): after two quick
    rotations, both events push the newest key. A failure raises, so that Lambda retries."""
    if event.get("source") != "s3-key-rotation" or event.get("detail-type") != "Bucket Key Rotated":
        return {"pushed": None}
    secret_arn = os.environ["SECRET_ARN"]
    secrets = boto3.client("secretsmanager", region_name=secret_arn.split(":")[3])  # the secret's region
    access_key_id, secret_access_key = current_key(secrets, secret_arn)
    push(os.environ["CONSUMER_URL"], os.environ["CONSUMER_TOKEN"], access_key_id, secret_access_key)
    print(json.dumps({"pushed": access_key_id, "rotatedTo": event.get("detail", {}).get("accessKeyId")}))
    return {"pushed": access_key_id}
