"""Read sessions written by export_sessions (JSON lines) into this deployment."""

import json
import sys

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from playground.models import Session, Visibility
from playground.transfer import ImportError_, import_session


class Command(BaseCommand):
    help = "Import sessions from JSON lines made by export_sessions."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", default="-", help="input file ('-': stdin)")

    def handle(self, *args, path: str, **options):
        source = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
        users = get_user_model()
        count = 0
        try:
            with transaction.atomic():
                for number, line in enumerate(source, 1):
                    if not line.strip():
                        continue
                    try:
                        data = json.loads(line)
                        owner = {"user_id": None, "owner_key": data.get("owner_key") or ""}
                        if data.get("owner"):
                            user = users.objects.filter(username=data["owner"]).first()
                            if user is None:
                                raise ImportError_(f"no user named {data['owner']!r} here")
                            owner = {"user_id": user.pk, "owner_key": ""}
                        session = import_session(data, owner)
                    except (ValueError, ImportError_) as exc:
                        raise CommandError(f"line {number}: {exc}") from exc
                    if data.get("visibility") in (Visibility.PRIVATE, Visibility.TEAM):
                        # Links are not carried over: their tokens belong to the old deployment.
                        Session.objects.filter(pk=session.pk).update(visibility=data["visibility"])
                    count += 1
        finally:
            if source is not sys.stdin:
                source.close()
        self.stderr.write(f"Imported {count} session(s).")
