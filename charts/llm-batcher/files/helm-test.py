"""`helm test`: stream one /generate answer through the API and check it against the contract.

Usage: helm-test.py BASE_URL TIMEOUT_S [--echo]

Runs in the API image with the standard library only. Checks: a `task` event first, `token`
events with ids <task_id>:0, :1, ... in order, then exactly one terminal event, `done`, whose
text is the tokens joined. With --echo (the worker runs the mock LLM) the answer must also be
the context's text, which the mock echoes. Exit status 0 if all holds, 1 with the reason if not.
"""

import json
import sys
import time
import urllib.parse
import urllib.request
import uuid


def read_events(lines):
    """SSE events as dicts (event, id, data) from an iterable of raw byte lines."""
    event = {}
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if event:
                yield event
            event = {}
            continue
        if line.startswith(":"):  # a comment: the server's keep-alive ping
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data" and "data" in event:
            event["data"] += "\n" + value
        else:
            event[field] = value
    if event:
        yield event


def check(events, expected_text=None):
    """The reason the events break the stream contract, or None."""
    if not events or events[0].get("event") != "task":
        return f"the stream did not start with a task event: {events[:1]}"
    task_id = json.loads(events[0]["data"])["task_id"]
    tokens = [e for e in events if e.get("event") == "token"]
    ids = [e.get("id") for e in tokens]
    if ids != [f"{task_id}:{i}" for i in range(len(ids))]:
        return f"token ids are not {task_id}:0, :1, ... in order: {ids[:5]}"
    terminals = [e for e in events if e.get("event") in ("done", "error")]
    if len(terminals) != 1 or terminals[0] is not events[-1]:
        last = [e.get("event") for e in events[-3:]]
        return f"expected one terminal event at the end, got {last}"
    data = json.loads(terminals[0]["data"])
    if terminals[0]["event"] == "error":
        return f"the task failed: {data.get('code')}: {data.get('message')}"
    text = "".join(json.loads(e["data"])["text"] for e in tokens)
    if data.get("text") != text or data.get("tokens") != len(tokens):
        return f"done does not match the tokens: {data.get('text')!r} vs {text!r}"
    if expected_text is not None and text != expected_text:
        return f"the answer is {text!r}, expected the echo {expected_text!r}"
    return None


def main(argv):
    base_url, timeout_s, echo = argv[0].rstrip("/"), float(argv[1]), "--echo" in argv[2:]
    body = f"helm test {uuid.uuid4().hex[:8]}: queued, batched, streamed."
    context = f"@mock ttft_ms=0 itl_ms=10\n{body}" if echo else body
    url = f"{base_url}/generate?{urllib.parse.urlencode({'context': context})}"
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            ctype = response.headers.get("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                print(f"FAIL: {url} answered {ctype!r}, not text/event-stream")
                return 1
            events = list(read_events(response))
    except OSError as exc:  # URLError, HTTPError, timeouts and refused connections
        print(f"FAIL: GET {url}: {exc}")
        return 1
    reason = check(events, body if echo else None)
    if reason:
        print(f"FAIL: {reason}")
        return 1
    done = json.loads(events[-1]["data"])
    elapsed_ms = (time.monotonic() - started) * 1000
    print(
        f"OK: {done['tokens']} tokens in {elapsed_ms:.0f} ms from worker {done.get('worker')}"
        f" (batch of {done.get('batch_size')}): {done['text']!r}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
