"""The `plugin` scenario's plugin: one trivial `on_request`, so the scenario measures what the plugin
machinery itself costs per request (the Python call, the request view, the hook's stats).

fastgw imports it as `bench.harness.trivial_plugin:Trivial`; the harness starts fastgw with the repository
root on PYTHONPATH (peers.Fastgw.start).
"""

from __future__ import annotations


class Trivial:
    def __init__(self, config: object = None) -> None:
        self.config = config

    def on_request(self, req: object) -> None:
        return None
