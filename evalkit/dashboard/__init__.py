"""`evalkit view`: jobs, analysis reports and trajectories in a browser, live (files only; executes nothing).

Public names: `create_app` (the aiohttp application, to embed or test) and `serve` (run it until cancelled).
"""

from evalkit.dashboard.server import create_app, serve

__all__ = ["create_app", "serve"]
