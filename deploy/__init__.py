"""Deployment: local clusters (processes on this host) and, later, two-host clusters over ssh."""
