"""A long-lived boto3 consumer of an org's prefix in the managed bucket, as a log
shipper runs: one client, configured once with a profile whose credential_process
is s3-key-rotation-credentials, reading the org's log object every INTERVAL
seconds until its standard input closes.

`python boto3_consumer.py PROFILE BUCKET KEY` prints a JSON line per read:
{"at": start of the read (epoch seconds), "key": the access key id the request was
signed with, "refreshAt": when botocore will next run the credential_process
(epoch seconds: Expiration less its 15-minute advisory margin), "ok": true or
false, "error": the error code}. Never a secret.
"""
import json
import re
import sys
import threading
import time

import boto3
from botocore.config import Config

INTERVAL = 0.5  # seconds between reads
ADVISORY_MARGIN = 15 * 60  # botocore runs the process again when fewer than this many seconds remain


def main():
    profile, bucket, key = sys.argv[1:4]
    session = boto3.Session(profile_name=profile)
    # One attempt a read: a refused key shows at once, as the consumer's failure.
    s3 = session.client("s3", config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}))
    signed = {}

    def note_signer(request, **_):
        header = request.headers.get("Authorization", b"")
        found = re.search(r"Credential=(\w+)/", header.decode() if isinstance(header, bytes) else header)
        signed["key"] = found.group(1) if found else None

    s3.meta.events.register("before-send.s3.GetObject", note_signer)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        signed.clear()
        started = time.time()
        try:
            s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            ok, error = True, None
        except Exception as e:  # a refused key (ClientError) or the helper failing (CredentialRetrievalError)
            ok, error = False, getattr(e, "response", {}).get("Error", {}).get("Code") or type(e).__name__
        # botocore's refreshable credentials keep their expiry private; the consumer
        # reports it so that the test knows when the next refresh is due.
        expiry = getattr(session.get_credentials(), "_expiry_time", None)
        refresh_at = expiry.timestamp() - ADVISORY_MARGIN if expiry else None
        print(json.dumps({"at": started, "key": signed.get("key"), "refreshAt": refresh_at, "ok": ok,
                          "error": error}), flush=True)
        stop.wait(INTERVAL)


if __name__ == "__main__":
    main()
