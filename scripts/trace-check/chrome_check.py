#!/usr/bin/env python3
"""Schema check of a Chrome trace (the Trace Event Format's JSON object or array form).

Checks the document shape, the keys every event of a phase (`ph`) requires and their types,
and two things a viewer needs to show hvprobe's traces well: a process_name metadata event,
and a thread_name metadata event for every thread that has events.

usage: chrome_check.py FILE
"""

import json
import numbers
import sys

NUMBER = "number"
INT = "int"
STR = "str"
OBJ = "object"

# Required keys per phase, from the Trace Event Format document.
REQUIRED = {
    "B": {"ts": NUMBER, "pid": INT, "tid": INT},
    "E": {"ts": NUMBER, "pid": INT, "tid": INT},
    "X": {"name": STR, "ts": NUMBER, "dur": NUMBER, "pid": INT, "tid": INT},
    "i": {"name": STR, "ts": NUMBER, "pid": INT, "tid": INT},
    "I": {"name": STR, "ts": NUMBER, "pid": INT, "tid": INT},
    "C": {"name": STR, "ts": NUMBER, "pid": INT, "args": OBJ},
    "b": {"name": STR, "cat": STR, "id": None, "ts": NUMBER, "pid": INT},
    "n": {"name": STR, "cat": STR, "id": None, "ts": NUMBER, "pid": INT},
    "e": {"name": STR, "cat": STR, "id": None, "ts": NUMBER, "pid": INT},
    "s": {"name": STR, "id": None, "ts": NUMBER, "pid": INT, "tid": INT},
    "t": {"name": STR, "id": None, "ts": NUMBER, "pid": INT, "tid": INT},
    "f": {"name": STR, "id": None, "ts": NUMBER, "pid": INT, "tid": INT},
    "M": {"name": STR, "pid": INT, "args": OBJ},
}
OPTIONAL = {"cat": STR, "args": OBJ, "tts": NUMBER, "cname": STR, "dur": NUMBER, "tid": INT}
METADATA = {
    "process_name": ("name", STR),
    "process_labels": ("labels", STR),
    "process_sort_index": ("sort_index", INT),
    "thread_name": ("name", STR),
    "thread_sort_index": ("sort_index", INT),
}


def type_ok(value, kind):
    if kind is None:
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    if kind == NUMBER:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 0
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == STR:
        return isinstance(value, str)
    return isinstance(value, dict)


def check_event(event):
    if not isinstance(event, dict):
        return "not an object"
    ph = event.get("ph")
    if ph not in REQUIRED:
        return f"unknown or missing ph {ph!r}"
    for key, kind in REQUIRED[ph].items():
        if key not in event:
            return f"ph {ph!r} requires {key!r}"
        if not type_ok(event[key], kind):
            return f"{key!r} has the wrong type or value: {event[key]!r}"
    for key, kind in OPTIONAL.items():
        if key in event and key not in REQUIRED[ph] and not type_ok(event[key], kind):
            return f"{key!r} has the wrong type: {event[key]!r}"
    if ph in ("i", "I") and event.get("s", "t") not in ("g", "p", "t"):
        return f"instant scope {event.get('s')!r} is not g, p or t"
    if ph == "M":
        if event["name"] not in METADATA:
            return f"unknown metadata event {event['name']!r}"
        key, kind = METADATA[event["name"]]
        if not type_ok(event["args"].get(key), kind):
            return f"metadata {event['name']!r} needs args.{key}"
        if event["name"].startswith("thread_") and "tid" not in event:
            return f"metadata {event['name']!r} needs a tid"
    return None


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        with open(sys.argv[1], encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as err:
        print(f"{sys.argv[1]}: not valid JSON: {err}", file=sys.stderr)
        return 1
    problems = []
    if isinstance(doc, list):
        events = doc
    elif isinstance(doc, dict) and isinstance(doc.get("traceEvents"), list):
        events = doc["traceEvents"]
        if doc.get("displayTimeUnit", "ms") not in ("ms", "ns"):
            problems.append(f"displayTimeUnit {doc['displayTimeUnit']!r} is not ms or ns")
    else:
        print(f"{sys.argv[1]}: neither an array nor an object with a traceEvents array",
              file=sys.stderr)
        return 1
    processes, threads, named_processes, named_threads = set(), set(), set(), set()
    for index, event in enumerate(events):
        problem = check_event(event)
        if problem:
            problems.append(f"event {index}: {problem}: {json.dumps(event)[:200]}")
            continue
        if event["ph"] == "M":
            if event["name"] == "process_name":
                named_processes.add(event["pid"])
            elif event["name"] == "thread_name":
                named_threads.add((event["pid"], event["tid"]))
        else:
            processes.add(event["pid"])
            if "tid" in event:
                threads.add((event["pid"], event["tid"]))
    for pid in sorted(processes - named_processes):
        problems.append(f"process {pid} has no process_name metadata")
    for pid, tid in sorted(threads - named_threads):
        problems.append(f"thread {pid}/{tid} has no thread_name metadata")
    if not events:
        problems.append("no events")
    for problem in problems:
        print(f"{sys.argv[1]}: {problem}", file=sys.stderr)
    if problems:
        return 1
    phases = {}
    for event in events:
        phases[event["ph"]] = phases.get(event["ph"], 0) + 1
    print(f"{len(events)} events: " + " ".join(f"{k}={v}" for k, v in sorted(phases.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
