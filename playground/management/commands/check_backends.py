"""`manage.py check_backends`: is each configured backend usable, and how (README)."""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand

from playground import backends, completions, probes


class Command(BaseCommand):
    help = (
        "Check every configured backend: reachable, key accepted, model served, and whether "
        "its logprobs are real, placeholders or absent (one max_tokens=1 request each)."
    )

    def add_arguments(self, parser):
        parser.add_argument("ids", nargs="*", help="backend ids (default: all)")

    def handle(self, *args, ids, **options):
        reports = asyncio.run(self._check(ids))
        self.stdout.write(probes.format_table(reports))
        if not all(r.ok for r in reports):
            self.stderr.write(self.style.WARNING("Some backends are not usable (see hints)."))
            raise SystemExit(1)

    async def _check(self, ids: list[str]) -> list[probes.Report]:
        client = completions.make_client()
        try:
            await backends.discover_models(client)
            chosen = [b for b in backends.configured_backends() if not ids or b.id in ids]
            return [await probes.probe(client, b) for b in chosen]
        finally:
            await client.aclose()
