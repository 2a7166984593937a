"""notifier: a Markdown summary of the run delivered to webhooks, Slack or a file.

Every delivery's result is in the output (and the log): a failed delivery is reported, not
hidden. A generic webhook gets `X-Runner-Signature: sha256=<HMAC of the body>` when the sink
names a secret (`secret_env`); a Slack sink may take its URL from `secret_env`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import httpx


def markdown(title: str, message: str, data: dict[str, Any]) -> str:
    lines = [f"## {title}", "", message] if message else [f"## {title}"]
    for name, value in data.items():
        lines += ["", f"### {name}"]
        if isinstance(value, dict):
            lines += ["", "| key | value |", "| --- | --- |"]
            lines += [
                f"| {k} | {json.dumps(v) if isinstance(v, dict | list) else v} |"
                for k, v in value.items()
            ]
        elif isinstance(value, list):
            lines += [
                f"- {json.dumps(item) if isinstance(item, dict | list) else item}"
                for item in value[:50]
            ]
            if len(value) > 50:
                lines.append(f"- ... and {len(value) - 50} more")
        else:
            lines.append(str(value))
    return "\n".join(lines) + "\n"


def deliver(
    sink: dict[str, Any], body: dict[str, Any], text: str, client: httpx.Client
) -> dict[str, Any]:
    kind = sink["kind"]
    secret = os.environ.get(sink["secret_env"], "") if sink.get("secret_env") else ""
    if kind == "file":
        path = Path(os.environ["RUNNER_WORKSPACE"]) / sink.get("path", "notifications.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(body) + "\n")
        return {
            "sink": f"file:{sink.get('path', 'notifications.jsonl')}",
            "ok": True,
            "status": "written",
        }
    url = sink.get("url") or (secret if kind == "slack" else "")
    if not url:
        return {"sink": kind, "ok": False, "status": "no url (set url or secret_env)"}
    payload = json.dumps({"text": text} if kind == "slack" else body).encode()
    headers = {"Content-Type": "application/json"}
    if kind == "webhook" and secret:
        digest = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
        headers["X-Runner-Signature"] = f"sha256={digest}"
    shown = f"{kind}:{httpx.URL(url).host}" if kind == "webhook" else "slack"
    try:
        response = client.post(url, content=payload, headers=headers)
    except httpx.HTTPError as exc:
        return {"sink": shown, "ok": False, "status": f"error: {type(exc).__name__}"}
    return {"sink": shown, "ok": response.is_success, "status": response.status_code}


def main() -> None:
    with open(os.environ["RUNNER_INPUT"], encoding="utf-8") as f:
        inputs = json.load(f)
    title = inputs.get("title") or f"Run {os.environ.get('RUNNER_RUN_ID', '')}"
    text = markdown(title, inputs.get("message", ""), inputs.get("data") or {})
    body = {
        "title": title,
        "message": inputs.get("message", ""),
        "markdown": text,
        "run": os.environ.get("RUNNER_RUN_ID"),
    }
    print(text)
    with httpx.Client(timeout=10.0) as client:
        deliveries = [deliver(sink, body, text, client) for sink in inputs.get("sinks") or []]
    for d in deliveries:
        print(f"delivery to {d['sink']}: {'ok' if d['ok'] else 'FAILED'} ({d['status']})")
    with open(os.environ["RUNNER_OUTPUT"], "w", encoding="utf-8") as f:
        json.dump({"deliveries": deliveries, "markdown": text}, f)


if __name__ == "__main__":
    main()
