"""A CloudEvents sink for the tests: every POST is parsed by the official CloudEvents SDK
(`cloudevents.http.from_http`, structured or binary mode; in batched mode,
`application/cloudevents-batch+json`, each element of the array as a structured event) and
appended as one JSON line (attributes and data, and `batched` for batched mode) to the events
file; a body the SDK refuses is answered 400 and logged to
the rejects file. Each kept event also carries `received` (when it arrived, RFC 3339). A POST
to a path under /plain/ (Slack, Teams, plain webhooks) is not a CloudEvent: its path, content
type and JSON body are appended to the bodies file instead.

`POST /control` with {"fail": N, "status": S, "retry_after": R} makes the next N deliveries
answer S (with Retry-After R when given) without keeping them; {"fail_ratio": F} makes each
delivery fail with S at random with probability F; {"drop": N} closes the next N connections
without answering.

    python receiver.py PORT_FILE EVENTS_FILE REJECTS_FILE BODIES_FILE
"""

import datetime
import json
import random
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.http import from_http

port_file, events_file, rejects_file, bodies_file = sys.argv[1:5]
lock = threading.Lock()
control = {"fail": 0, "fail_ratio": 0.0, "status": 503, "retry_after": None, "drop": 0}


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path == "/control":
            with lock:
                control.update(json.loads(body))
            self.send_response(204)
            self.end_headers()
            return
        with lock:
            if control["drop"] > 0:
                control["drop"] -= 1
                self.close_connection = True
                self.connection.close()
                return
            failing = control["fail"] > 0 or random.random() < control["fail_ratio"]
            if failing:
                control["fail"] = max(control["fail"] - 1, 0)
                self.send_response(control["status"])
                if control["retry_after"] is not None:
                    self.send_header("Retry-After", str(control["retry_after"]))
                self.end_headers()
                return
        if self.path.startswith("/plain/"):
            record = {
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "body": json.loads(body),
                "received": now(),
            }
            with lock, open(bodies_file, "a") as bodies:
                bodies.write(json.dumps(record) + "\n")
            self.send_response(200)
            self.end_headers()
            return
        batched = (self.headers.get("Content-Type") or "").startswith(
            "application/cloudevents-batch+json"
        )
        try:
            if batched:
                structured = {"content-type": "application/cloudevents+json"}
                parsed = [
                    from_http(structured, json.dumps(element).encode())
                    for element in json.loads(body)
                ]
            else:
                parsed = [from_http(dict(self.headers), body)]
        except Exception as error:  # the SDK's refusal is the test's finding
            with lock, open(rejects_file, "a") as rejects:
                rejects.write(json.dumps({"error": str(error), "body": body.decode()}) + "\n")
            self.send_response(400)
            self.end_headers()
            return
        records = []
        for event in parsed:
            record = {key: value for key, value in event.get_attributes().items()}
            record["data"] = event.data
            record["authorization"] = self.headers.get("Authorization")
            record["received"] = now()
            record["batched"] = batched
            records.append(json.dumps(record, default=str) + "\n")
        with lock, open(events_file, "a") as events:
            events.writelines(records)
        self.send_response(202)
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as out:
    out.write(str(server.server_address[1]))
import os

os.rename(port_file + ".tmp", port_file)
server.serve_forever()
