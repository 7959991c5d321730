"""`manage.py prepare_offline_model`: build the offline model's cache ahead of the first request.

`make run` calls it so the first completion does not wait for a build. With a fresh cache it
only reads the file's small header and returns at once.
"""

from __future__ import annotations

import threading
import time

from django.core.management.base import BaseCommand

from playground.offline import build_model, default_path, is_fresh


class Command(BaseCommand):
    help = "Build the built-in offline model's cache if it is missing or stale."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--force", action="store_true", help="rebuild even if the cache is fresh"
        )

    def handle(self, *args, force: bool = False, **options) -> None:
        path = default_path()
        if is_fresh(path) and not force:
            if options["verbosity"] > 1:
                self.stdout.write(f"The offline model at {path} is up to date.")
            return
        started = time.monotonic()
        announced = threading.Event()

        def announce() -> None:
            announced.set()
            self.stdout.write("Building the offline model from the Python standard library…")
            self.stdout.flush()

        # Only a build that takes a noticeable time is worth a message.
        timer = threading.Timer(1.0, announce)
        timer.daemon = True
        timer.start()
        try:
            build_model(path)
        finally:
            timer.cancel()
            timer.join()
        if announced.is_set():
            self.stdout.write(f"done in {time.monotonic() - started:.1f} s")
