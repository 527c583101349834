"""Gateway API front end, TLS (issue 13): HTTPS listeners from kubernetes.io/tls Secrets, and
BackendTLSPolicy mapped to an upstream's `tls` (SNI and verified name, CA bundle from ConfigMaps)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from support.certs import CA
from test_gatewayapi import GW, dump, gateway, native, route, service, slice_

from fastgw.config import ConfigError
from fastgw.gatewayapi import load_manifests


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = CA(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("site", ["example.org", "*.example.org"], kind="rsa")


def secret(name: str, crt: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": name},
            "data": {"tls.crt": base64.b64encode(crt.encode()).decode(),
                     "tls.key": base64.b64encode(key.encode()).decode()}, **extra}


def https_gateway(refs=("site",)) -> dict[str, Any]:
    return gateway(listeners=[{"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "*.example.org",
                               "tls": {"mode": "Terminate", "certificateRefs": [{"name": r} for r in refs]}}])


def test_https_listener_from_a_tls_secret(pki):
    _, site = pki
    docs = [https_gateway(), secret("site", site.cert_pem, site.key_pem), route(), service(), slice_()]
    out = native(*docs)
    (listener,) = out["listeners"]
    assert listener["tls"] == {"certificates": [{"cert_pem": site.cert_pem, "key_pem": site.key_pem}]}
    cfg = load_manifests(dump(*docs), "m.yaml")       # the native checks load the pair
    assert cfg.listeners[0].tls.certificates[0].cert_pem == site.cert_pem


def test_https_listener_errors_point_at_the_manifest(pki):
    _, site = pki
    other = CA(Path(site.cert_path).parent / "other").issue("x", ["x.example.org"])
    with pytest.raises(ConfigError) as exc:
        load_manifests(dump(https_gateway(("missing",)), route(), service(), slice_()), "m.yaml")
    got = {(i.path, i.message) for i in exc.value.errors}
    assert ("$[0].spec.listeners[0].tls.certificateRefs[0].name",
            "Secret 'default/missing' not found in the manifests") in got
    text = dump(https_gateway(("ok", "bad")), secret("ok", site.cert_pem, site.key_pem),
                secret("bad", site.cert_pem, other.key_pem), route(), service(), slice_())
    with pytest.raises(ConfigError) as exc:
        load_manifests(text, "m.yaml")
    got = {(i.path, i.message) for i in exc.value.errors}
    assert any(p.startswith("$[0].spec.listeners[0].tls.certificateRefs[1]") and "does not match" in m
               for p, m in got), got


def policy(name: str, svc: str = "svc", section: str | None = None, ts: str | None = None,
           **validation: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": svc}
    if section:
        ref["sectionName"] = section
    meta: dict[str, Any] = {"name": name}
    if ts:
        meta["creationTimestamp"] = ts
    return {"apiVersion": GW, "kind": "BackendTLSPolicy", "metadata": meta,
            "spec": {"targetRefs": [ref], "validation": validation}}


def configmap(name: str, pem: str | None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"ca.crt": pem} if pem is not None else {}}


def test_backend_tls_policy_maps_to_upstream_tls(pki):
    ca, _ = pki
    docs = [gateway(), route(), service(ports=[{"name": "btls", "port": 8080, "targetPort": 9000,
                                                "appProtocol": "HTTPS"}]),
            slice_(port_name="btls"), configmap("ca", ca.cert_pem),
            policy("newer", section="btls", ts="2026-01-02T00:00:00Z", hostname="other.example.com",
                   caCertificateRefs=[{"group": "", "kind": "ConfigMap", "name": "ca"}]),
            policy("older", section="btls", ts="2026-01-01T00:00:00Z", hostname="abc.example.com",
                   caCertificateRefs=[{"group": "", "kind": "ConfigMap", "name": "ca"}]),
            policy("whole-service", hostname="general.example.com", wellKnownCACertificates="System")]
    out = native(*docs)
    (up,) = out["upstreams"].values()
    assert up["tls"] == {"server_name": "abc.example.com", "ca_pem": ca.cert_pem}
    load_manifests(dump(*docs), "m.yaml")


def test_backend_tls_policy_subject_alt_names(pki):
    ca, _ = pki
    docs = [gateway(), route(), service(), slice_(), configmap("ca", ca.cert_pem),
            policy("p", hostname="abc.example.com", caCertificateRefs=[{"group": "", "kind": "ConfigMap", "name": "ca"}],
                   subjectAltNames=[{"type": "Hostname", "hostname": "abc.example.com"},
                                    {"type": "URI", "uri": "spiffe://abc.example.com/test-identity"}])]
    (up,) = native(*docs)["upstreams"].values()
    assert up["tls"]["subject_alt_names"] == [{"hostname": "abc.example.com"},
                                              {"uri": "spiffe://abc.example.com/test-identity"}]
    load_manifests(dump(*docs), "m.yaml")


@pytest.mark.parametrize("ref", [
    {"group": "", "kind": "ConfigMap", "name": "nonexistent"},
    {"group": "", "kind": "ConfigMap", "name": "empty"},
    {"group": "invalid.io", "kind": "InvalidKind", "name": "x"},
])
def test_backend_tls_policy_with_a_bad_ca_ref_leaves_the_backend_unresolved(ref):
    docs = [gateway(), route(), service(), slice_(), configmap("empty", None),
            policy("p", hostname="abc.example.com", caCertificateRefs=[ref])]
    out = native(*docs)
    assert out["upstreams"] == {}
    (r,) = out["routes"]
    assert r.get("upstream") is None     # answers 500, as Gateway API asks


def test_tls_terminate_and_passthrough_listeners_on_one_port(pki):
    """TLSRoute Terminate: a TLS listener in Terminate mode is a native `tls` stream listener with the
    Secret's certificate; one in Passthrough mode on the same port stays tls-passthrough without."""
    _, site = pki
    gw = gateway(listeners=[
        {"name": "term", "port": 8443, "protocol": "TLS", "hostname": "a.example.org",
         "tls": {"mode": "Terminate", "certificateRefs": [{"name": "site"}]}},
        {"name": "pass", "port": 8443, "protocol": "TLS", "hostname": "b.example.org", "tls": {"mode": "Passthrough"}},
    ])
    tls_route = {"apiVersion": GW, "kind": "TLSRoute", "metadata": {"name": "t"},
                 "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["a.example.org", "b.example.org"],
                          "rules": [{"backendRefs": [{"name": "svc", "port": 8080}]}]}}
    docs = [gw, secret("site", site.cert_pem, site.key_pem), tls_route, service(), slice_()]
    out = native(*docs)
    term, passthrough = out["listeners"]
    assert term["protocol"] == "tls" and term["tls"]["certificates"] == [
        {"cert_pem": site.cert_pem, "key_pem": site.key_pem}]
    assert passthrough["protocol"] == "tls-passthrough" and "tls" not in passthrough
    (r,) = out["routes"]
    assert r["listeners"] == [term["name"], passthrough["name"]] and r["match"] == {
        "hosts": ["a.example.org", "b.example.org"]}
    cfg = load_manifests(dump(*docs), "m.yaml")            # the native checks accept the shared port
    assert [lst.protocol for lst in cfg.listeners] == ["tls", "tls-passthrough"]
    with pytest.raises(ConfigError) as exc:                  # Terminate needs its certificates
        load_manifests(dump(gateway(listeners=[{"name": "t", "port": 8443, "protocol": "TLS",
                                                "tls": {"mode": "Terminate"}}]), service(), slice_()), "m.yaml")
    assert any("certificateRefs" in i.path or "certificate" in i.message for i in exc.value.errors), exc.value.errors
