"""The frame path: capture -> gate -> embed and match -> vote -> messages, and the command handlers."""
