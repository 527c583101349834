"""A plugin the TLS tests load (as `support.tls_plugins`): answers with what its request view says
of the client certificate, for consumer identification by certificate."""

from __future__ import annotations

import json

from fastgw.plugin import Response


class CertConsumer:
    """Answers 200 with the view's client_cert as JSON on /whoami; 403 without a certificate."""

    def __init__(self, config):
        self.config = config

    def on_request(self, req):
        if not req.path.startswith("/whoami"):
            return None
        cert = req.client_cert
        if cert is None:
            return Response.json(403, json.dumps({"error": "no client certificate"}))
        return Response.json(200, json.dumps(cert))
