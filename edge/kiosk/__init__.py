"""The kiosk screen: a local web page, fed live by the runtime, where the shopper sees and corrects decisions.

See :mod:`edge.kiosk.screen` (what the runtime uses), :mod:`edge.kiosk.server` (HTTP + server-sent
events), :mod:`edge.kiosk.actions` (search / recommend / confirm, validated like MQTT commands) and
:mod:`edge.kiosk.confirmations` (confirmed crops kept on the device).
"""
