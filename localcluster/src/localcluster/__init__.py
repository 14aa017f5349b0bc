"""A local stand-in for a Kubernetes cluster: an API server emulator and a node that runs pods as processes.

A development tool for tests and the demo; never part of what users deploy.
"""
