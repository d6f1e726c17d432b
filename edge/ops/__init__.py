"""Running the box: Prometheus metrics, Home Assistant discovery, health heartbeat, systemd integration.

The frame loop talks to all of it through :class:`edge.ops.hooks.RuntimeHooks` (one call per
stage); nothing here is imported by the loop's hot path other than that facade.
"""
