"""Notification channels and the outbox worker that delivers through them."""
