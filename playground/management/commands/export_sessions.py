"""Write every saved session, with its runs, as JSON lines (one session a line)."""

import json
import sys

from django.core.management.base import BaseCommand

from playground.models import Session
from playground.transfer import export_session


class Command(BaseCommand):
    help = "Export all sessions (with runs and token probabilities) as JSON lines."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", default="-", help="output file ('-': stdout)")

    def handle(self, *args, path: str, **options):
        out = sys.stdout if path == "-" else open(path, "w", encoding="utf-8")  # noqa: SIM115
        count = 0
        try:
            for session in Session.objects.select_related("user").order_by("pk").iterator():
                data = export_session(session)
                # Who owned it, so that import_sessions can give it back to the same account.
                data["owner"] = session.user.get_username() if session.user else None
                data["owner_key"] = session.owner_key or None
                data["visibility"] = session.visibility
                out.write(json.dumps(data, ensure_ascii=False) + "\n")
                count += 1
        finally:
            if out is not sys.stdout:
                out.close()
        self.stderr.write(f"Exported {count} session(s).")
