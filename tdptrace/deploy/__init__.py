"""Deployment files shipped with tdptrace: a systemd unit for `tdptrace serve` and Prometheus alert rules."""
