"""pocketserver."""
