"""Notifications to the humans in the loop: a durable outbox, delivered by the worker to a signed
webhook (Standard Webhooks) and/or a Slack incoming webhook."""
