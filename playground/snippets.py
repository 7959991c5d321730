"""“View code”: the exact request the playground would send, as curl, Python and JavaScript.

The body is `completions.build_payload` itself, so the snippet cannot drift from what is sent.
The key is never written out: each snippet reads it from the environment variable the server
reads it from (`$NVIDIA_API_KEY`, `$COMPLETIONS_API_KEY`).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from playground.backends import Backend
from playground.completions import CompletionRequest, build_payload

KEY_VARIABLES = {"nvidia": "NVIDIA_API_KEY", "completions": "COMPLETIONS_API_KEY"}


@dataclass(frozen=True, kw_only=True)
class Snippets:
    url: str
    payload: dict
    key_variable: str | None
    curl: str
    python: str
    javascript: str


def key_variable(backend: Backend) -> str | None:
    if not backend.api_key:
        return None
    return KEY_VARIABLES.get(backend.id)


def build_snippets(backend: Backend, request: CompletionRequest, *, base_url: str) -> Snippets:
    """`base_url` is the backend's, or this server's own `/v1` for the built-in model."""
    url = base_url.rstrip("/") + "/completions"
    payload = build_payload(backend, request, stream=True)
    body = json.dumps(payload, indent=2, ensure_ascii=False)
    variable = key_variable(backend)

    curl = [f"curl -N {shlex.quote(url)}", "  -H 'Content-Type: application/json'"]
    if variable:
        curl.append(f'  -H "Authorization: Bearer ${variable}"')
    curl.append(f"  -d {shlex.quote(body)}")

    python = ["import json", "import os", "", "import httpx", ""]
    python.append(f"payload = json.loads({body!r})")
    headers = "{}"
    if variable:
        headers = f'{{"Authorization": f"Bearer {{os.environ[{variable!r}]}}"}}'
    python += [
        f"headers = {headers}",
        f"with httpx.stream({'POST'!r}, {url!r}, json=payload, headers=headers, timeout=120) as r:",
        "    r.raise_for_status()",
        "    for line in r.iter_lines():",
        '        if line.startswith("data: ") and line != "data: [DONE]":',
        '            print(json.loads(line[6:])["choices"][0]["text"], end="", flush=True)',
    ]

    js_headers = ['"Content-Type": "application/json"']
    if variable:
        js_headers.append(f"Authorization: `Bearer ${{process.env.{variable}}}`")
    javascript = [
        f"const payload = {body};",
        "",
        f"const response = await fetch({json.dumps(url)}, {{",
        '  method: "POST",',
        "  headers: { " + ", ".join(js_headers) + " },",
        "  body: JSON.stringify(payload),",
        "});",
        "const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();",
        "for (;;) {",
        "  const { value, done } = await reader.read();",
        "  if (done) break;",
        "  process.stdout.write(value); // server-sent events: data: {...}",
        "}",
    ]
    return Snippets(
        url=url,
        payload=payload,
        key_variable=variable,
        curl=" \\\n".join(curl),
        python="\n".join(python),
        javascript="\n".join(javascript),
    )
