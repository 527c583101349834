"""Example fastgw plugins (docs/plugins.md). Each module holds one plugin class, named in a config as
`module: "examples.plugins.<module>:<Class>"`; the repository root must be on the gateway's
PYTHONPATH (it is when fastgw runs as `python -m fastgw` from the repository root).

- tenant_router:  TenantRouter, tags requests with a tenant id and refuses unknown tenants
- request_signer: RequestSigner, signs upstream requests with HMAC-SHA256
- external_auth:  ExternalAuth, an async hook asking an HTTP auth service about each request
"""
