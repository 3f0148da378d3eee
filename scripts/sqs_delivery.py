"""Lambda's SQS event source mapping as template.yaml configures it for sweep-worker
(BatchSize 1, ReportBatchItemFailures), played against a real queue on the local
endpoint: the one stand-in of the wire tests (tests/wire/test_fanout_wire.py) and the
fan-out benchmark (scripts/bench_fanout.py).

- `receive()`: one message, as the mapping polls (every attribute asked, so that the
  event carries ApproximateReceiveCount and the timestamps);
- `event(message)`: the SQS event Lambda hands the function for it;
- `deliver(message, invoke)`: the function invoked with that event, then the message
  deleted unless the answer lists it in `batchItemFailures` (or the invocation failed:
  the whole batch comes back after its visibility timeout);
- `time_passes()`: the visibility timeout of every message received and not deleted
  ends now (ChangeMessageVisibility 0), so that a redelivery costs no waiting;
- `drain(invoke)`: delivers until the queue is empty, that time passing between rounds.

The in-process Rust test of the fan-out (tests/fanout_moto.rs) plays the same mapping
with the SDK's types: it hands the event to the handler itself, not to a binary.
"""
import threading

REGION = "us-east-1"
# The message attributes Lambda copies into a record's `attributes`.
RECORD_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp")
MAX_RECEIVES = 3  # template.yaml's maxReceiveCount: a message is received at most this often


def sqs_event(message, queue_arn, region=REGION):
    """The event Lambda's SQS event source hands the function for one message."""
    attributes = message.get("Attributes", {})
    return {"Records": [{
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {k: attributes[k] for k in RECORD_ATTRIBUTES if k in attributes},
        "messageAttributes": {name: {"stringValue": v.get("StringValue"), "binaryValue": v.get("BinaryValue"),
                                     "stringListValues": [], "binaryListValues": [], "dataType": v["DataType"]}
                              for name, v in message.get("MessageAttributes", {}).items()},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }]}


def queue_arn(sqs, url):
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


class EventSourceMapping:
    """The mapping of the queue at `url` (an SQS client `sqs`) to a function.

    `failure`: the exception class of a failed invocation (the gateway's FunctionError);
    `deliver` returns it rather than raising, as Lambda sees a failed invocation. Safe to
    use from several threads (the benchmark's sandboxes)."""

    def __init__(self, sqs, url, failure=Exception, region=REGION):
        self.sqs, self.url, self.failure, self.region = sqs, url, failure, region
        self.arn = queue_arn(sqs, url)
        self.held = {}  # message id -> the receipt of its latest delivery, while not deleted
        self.lock = threading.Lock()

    def receive(self, wait_seconds=0, visibility=None):
        """One message (None: none visible), held until it is deleted or its time passes."""
        extra = {} if visibility is None else {"VisibilityTimeout": visibility}
        got = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=1, WaitTimeSeconds=wait_seconds,
                                       AttributeNames=["All"], MessageAttributeNames=["All"],
                                       **extra).get("Messages", [])
        if not got:
            return None
        message = got[0]
        with self.lock:
            self.held[message["MessageId"]] = message["ReceiptHandle"]
        return message

    def event(self, message):
        return sqs_event(message, self.arn, self.region)

    def deliver(self, message, invoke):
        """`invoke(event)` (the function's answer; it raises `failure` if the invocation
        failed) with `message`, settled as the mapping does: (the answer or the failure,
        whether the message was deleted)."""
        try:
            answer = invoke(self.event(message))
        except self.failure as e:
            return e, False
        failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
        if message["MessageId"] in failed:
            return answer, False
        try:
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        except Exception:  # noqa: BLE001 -- an older receipt of a message received again: SQS keeps it
            return answer, False
        with self.lock:
            if self.held.get(message["MessageId"]) == message["ReceiptHandle"]:
                del self.held[message["MessageId"]]
        return answer, True

    def time_passes(self):
        """The visibility timeout of every message received and not deleted passes."""
        with self.lock:
            held, self.held = self.held, {}
        for receipt in held.values():
            try:
                self.sqs.change_message_visibility(QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=0)
            except Exception:  # noqa: BLE001 -- deleted meanwhile, or moved to the dead-letter queue
                pass

    def depth(self, url=None):
        """The messages of the queue (or of the queue at `url`), visible or in flight."""
        attributes = self.sqs.get_queue_attributes(QueueUrl=url or self.url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return sum(int(v) for v in attributes.values())

    def drain(self, invoke, rounds=MAX_RECEIVES + 1):
        """Delivers until the queue is empty, the visibility timeout of what failed passing
        between rounds: (deliveries, failed deliveries)."""
        deliveries = failures = 0
        for _ in range(rounds):
            while (message := self.receive()) is not None:
                answer, _ = self.deliver(message, invoke)
                deliveries += 1
                failures += isinstance(answer, self.failure) or bool(answer.get("batchItemFailures"))
            if not self.held and self.depth() == 0:
                break
            self.time_passes()
        return deliveries, failures
