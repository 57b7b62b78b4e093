"""Helpers every component may use: logging set-up, health and metrics endpoints."""
