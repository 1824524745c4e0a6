"""Processor webhooks: verify the signature over the raw body, parse into events, apply through the service."""
