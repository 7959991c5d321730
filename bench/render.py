"""Sections 3 and 4: a long annotated completion, on the server and in the browser; page weight.

The server side calls `rendering.render_completion` in this process on a 4,096-token Python
completion with five alternatives per token. The browser side drives a real generation through
the page (system Chromium via Playwright) against an upstream that sends the 4,096 tokens
unpaced, and times, inside the page, the moment the rendered completion can show a tooltip.
"""

from __future__ import annotations

import gzip
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench import procs
from bench.relay import app_env
from bench.report import Row
from bench.upstream import real_code_tokens

TOKENS = 4096
ALTERNATIVES = 5
RENDER_REPEATS = 30
CHROMIUM = "/usr/bin/chromium"
# As tests/conftest.py: keep Chromium from calling home (the machine has only loopback).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def completion_tokens():
    """4,096 tokens of real Python (`upstream.real_code_tokens`), each with a logprob and
    ALTERNATIVES alternatives, as the upstream sends them."""
    from playground.completions import Alternative, Token

    pieces = real_code_tokens(TOKENS)
    tokens = []
    for i, text in enumerate(pieces):
        logprob = -((i * 37) % 100) / 40
        alternatives = [Alternative(text=text, logprob=logprob)]
        alternatives += [
            Alternative(text=f"alt{k}", logprob=logprob - 0.5 * k) for k in range(1, ALTERNATIVES)
        ]
        tokens.append(Token(text=text, logprob=logprob, alternatives=tuple(alternatives)))
    return tokens


def server_render() -> list[Row]:
    from playground.completions import LogprobStatus
    from playground.rendering import render_completion

    tokens = completion_tokens()
    text = "".join(t.text for t in tokens)
    prompt = "import difflib\n\n"

    def render():
        return render_completion(
            prompt=prompt,
            tokens=tokens,
            text=text,
            logprobs=LogprobStatus.REAL,
            alternatives_shown=ALTERNATIVES,
        )

    render()  # warm-up: lexer and escaping caches
    times = []
    for _ in range(RENDER_REPEATS):
        started = time.perf_counter()
        rendered = render()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    html = rendered.html.encode()
    data = rendered.data_json.encode()
    section = "3 Long completion (server)"
    return [
        Row(
            section,
            f"render_completion, {TOKENS} tokens × {ALTERNATIVES} alternatives",
            f"{median * 1000:.1f} ms",
            f"median of {RENDER_REPEATS}; {len(text):,} characters",
            "≤ 20 ms",
            median <= 0.020,
        ),
        Row(
            section,
            "HTML bytes per token",
            f"{len(html) / TOKENS:.1f} B",
            f"{len(html) / 1024:.0f} KiB fragment",
        ),
        Row(
            section,
            "fragment + alternatives data, gzipped",
            f"{(len(gzip.compress(html)) + len(gzip.compress(data))) / 1024:.0f} KiB",
            f"raw {(len(html) + len(data)) / 1024:.0f} KiB "
            f"(data {len(gzip.compress(data)) / 1024:.0f} KiB gz)",
        ),
    ]


# Runs in the page before Generate is pressed: notes when streamed text last landed in #live
# (the end of the token stream, as a reader sees it), and, as soon as the final fragment lands,
# hovers a token in the middle of it and notes when its tooltip is filled in and painted.
WATCH = """() => {
  window.__bench = {};
  const result = document.querySelector('#result');
  new MutationObserver((records) => {
    if (!window.__bench.swapped && records.some(r => r.addedNodes.length)) {
      window.__bench.lastText = performance.now();
    }
  }).observe(document.querySelector('#live'), {childList: true});
  new MutationObserver(() => {
    if (window.__bench.swapped) return;
    const token = result.querySelector('[data-run] .t[data-i="2048"]');
    if (!token) return;
    window.__bench.swapped = performance.now();
    token.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
    const tip = document.querySelector('#tooltip');
    if (!tip.hidden && tip.querySelectorAll('li').length) {
      window.__bench.tooltip = performance.now();
      requestAnimationFrame(() => setTimeout(() => { window.__bench.painted = performance.now(); }));
    }
  }).observe(result, {childList: true, subtree: true});
}"""

MEASURE = """() => {
  const entry = performance.getEntriesByType('resource').filter(e => e.name.endsWith('/generate')).pop();
  const code = document.querySelector('#result [data-run] code');
  const tokens = code.querySelectorAll('.t').length;
  let nodes = 0;
  const walker = document.createTreeWalker(code, NodeFilter.SHOW_ALL);
  while (walker.nextNode()) nodes++;
  const elements = code.querySelectorAll('*').length;
  const all = document.querySelectorAll('#result *').length;
  const tip = document.querySelector('#tooltip');
  const times = [];
  for (let i = 0; i < 60; i++) {
    const token = code.querySelector(`.t[data-i="${(i * 67) % tokens}"]`);
    const started = performance.now();
    token.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
    tip.offsetHeight;  // force the layout the user would wait for
    times.push(performance.now() - started);
    token.dispatchEvent(new MouseEvent('mouseout', {bubbles: true, relatedTarget: document.body}));
  }
  times.sort((a, b) => a - b);
  return {
    responseEnd: entry ? entry.responseEnd : null,
    ...window.__bench, tokens, nodes, elements, all,
    show: times[Math.floor(times.length / 2)],
  };
}"""


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def browser(upstream: procs.Upstream) -> list[Row]:
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        return [Row("3 Long completion (browser)", "browser", f"skipped: no {CHROMIUM}")]
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        procs.app(Path(tmp), **app_env(upstream.port)) as app,
        sync_playwright() as playwright,
    ):
        chromium = launch(playwright)
        try:
            rows += page_weight(chromium, app.url)
            rows += long_completion(chromium, app.url, expect)
        finally:
            chromium.close()
    return rows


def long_completion(chromium, url: str, expect) -> list[Row]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.goto(url + "/")
    page.get_by_label("Model", exact=True).select_option("completions")
    page.locator("#id_prompt").fill("import difflib\n\n# delay_ms=0 corpus=difflib\n")
    page.locator("#id_max_tokens").fill(str(TOKENS))
    page.locator("#id_logprobs").fill(str(ALTERNATIVES))
    page.evaluate(WATCH)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Done.")
    page.wait_for_function("() => window.__bench.painted")
    measured = page.evaluate(MEASURE)
    # And by a real pointer: the tooltip works, with five alternatives.
    page.locator("#result .t").nth(1000).hover()
    expect(page.locator("#tooltip li")).to_have_count(ALTERNATIVES)
    context.close()
    end = measured.get("lastText")
    ready = measured["painted"] - end if end else None
    closed = measured["responseEnd"]
    per_token = measured["elements"] / measured["tokens"]
    section = "3 Long completion (browser)"
    return [
        Row(
            section,
            "end of stream → working tooltip",
            f"{ready:.0f} ms" if ready is not None else "n/a",
            f"from the last streamed text: fragment swapped {measured['swapped'] - end:+.0f} ms, "
            f"tooltip filled {measured['tooltip'] - end:+.0f} ms, painted {ready:+.0f} ms"
            + (f"; stream closed {closed - end:+.0f} ms" if closed else "")
            if end
            else "no streamed text was seen",
        ),
        Row(
            section,
            "DOM elements per token",
            f"{per_token:.2f}",
            f"{measured['elements']:,} elements, {measured['nodes']:,} nodes with text, "
            f"{measured['tokens']:,} tokens",
            "≤ 1.5",
            per_token <= 1.5,
        ),
        Row(
            section,
            "show a tooltip (hover → laid out)",
            f"{measured['show']:.2f} ms",
            "median of 60 tokens",
        ),
    ]


def page_weight(chromium, url: str) -> list[Row]:
    context = chromium.new_context()
    page = context.new_page()
    responses = []
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("response", lambda response: responses.append(response))
    page.goto(url + "/", wait_until="networkidle")
    origin = urlsplit(url).netloc
    foreign = [
        u
        for u in requests
        if urlsplit(u).netloc not in (origin, "") and not u.startswith(("data:", "about:"))
    ]
    js_css_raw = 0
    js_css_gz = 0
    served = 0
    total_gz = 0
    for response in responses:
        body = response.body()
        size = len(gzip.compress(body, 9))
        total_gz += size
        kind = response.request.resource_type
        if kind in ("script", "stylesheet"):
            js_css_raw += len(body)
            js_css_gz += size
        served += int(response.headers.get("content-length", len(body)))
    context.close()
    section = "4 Page weight"
    return [
        Row(
            section,
            "requests on first load",
            str(len(requests)),
            ", ".join(urlsplit(u).path.rsplit("/", 1)[-1] or "/" for u in requests),
        ),
        Row(
            section,
            "JS + CSS, gzipped",
            f"{js_css_gz / 1024:.1f} KiB",
            f"{js_css_raw / 1024:.1f} KiB raw; everything {total_gz / 1024:.1f} KiB gz, "
            f"{served / 1024:.1f} KiB as served",
            "≤ 30 KB",
            js_css_gz <= 30 * 1000,
        ),
        Row(
            section,
            "requests to another origin",
            str(len(foreign)),
            ", ".join(foreign[:3]),
            "0",
            not foreign,
        ),
    ]
