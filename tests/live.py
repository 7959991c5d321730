"""Talking to the app served by uvicorn (conftest.run_app) as a browser's htmx would."""

from __future__ import annotations

import re

import httpx

FORM = {
    "backend": "completions",
    "prompt": "def add(a, b):\n",
    "temperature": "0.2",
    "top_p": "0.95",
    "frequency_penalty": "0",
    "presence_penalty": "0",
    "seed": "3",
    "max_tokens": "16",
    "logprobs": "2",
}


def session(url: str) -> httpx.Client:
    """A client holding the CSRF cookie, sending its token as the page's htmx does."""
    client = httpx.Client(base_url=url, timeout=30)
    page = client.get("/").text
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)
    client.headers.update({"X-CSRFToken": token, "HX-Request": "true"})
    return client


def generate(client: httpx.Client, **changes) -> httpx.Response:
    """One whole generation (the stream read to its end)."""
    return client.post("/generate", data={**FORM, **changes})
