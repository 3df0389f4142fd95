"""Deployment: one launcher for clusters on one host (`up --local`) or several (a cluster file, over ssh)."""
