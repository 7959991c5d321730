"""Management commands of the playground app."""
