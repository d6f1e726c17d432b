"""Chain scale: catalog snapshots built on Ray (build), shipped to store devices (publish, updates), seen (status)."""
