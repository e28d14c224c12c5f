"""The floor of bench/bulkevents.py: a WSGI app that reads and parses the JSON body, then answers 202."""

import json


def application(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    batches = json.loads(environ["wsgi.input"].read(length))
    body = json.dumps({"accepted": len(batches)}).encode()
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
