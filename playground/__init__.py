"""playground: a web playground for code-completion language models (Django project and app in one)."""
