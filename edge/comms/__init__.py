"""Talking to the store: the MQTT link, the on-disk outbox under it, and remote commands."""
