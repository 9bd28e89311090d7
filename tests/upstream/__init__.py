"""Tests of proxy/upstream/ (the backend client, its chunk parser, forwarding)."""
