"""pocketserver: a complete, light Matrix homeserver in one SQLite file."""

__version__ = "0.1.0"
