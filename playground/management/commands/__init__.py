"""The playground's `manage.py` commands."""
