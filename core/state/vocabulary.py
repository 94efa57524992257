"""The vocabulary of Kubernetes objects, as the manifests index packs them (msgpack): the
compressor's dictionary. Small objects compress poorly alone (a 200-byte Service has nothing
to repeat); against these field names and common values they shrink to about a third.
Changing this text changes how entries are compressed, never what they read back as."""

from __future__ import annotations

import msgspec

_TEMPLATES = [
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "", "namespace": "default"},
     "spec": {"podSelector": {"matchLabels": {}}, "policyTypes": ["Ingress", "Egress"],
              "ingress": [{"from": [{"podSelector": {"matchLabels": {}}, "namespaceSelector": {"matchLabels": {}},
                                     "ipBlock": {"cidr": "", "except": []}}],
                           "ports": [{"protocol": "TCP", "port": 80}]}],
              "egress": [{"to": [{"ipBlock": {"cidr": ""}}], "ports": [{"protocol": "UDP", "port": 53}]}]}},
    {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "", "namespace": "default"},
     "spec": {"endpointSelector": {"matchLabels": {}},
              "ingress": [{"fromEndpoints": [{"matchLabels": {}}],
                           "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                        "rules": {"http": [{"method": "GET", "path": "/"}]}}]}],
              "egress": [{"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                                           "k8s-app": "kube-dns"}}],
                          "toFQDNs": [{"matchName": ""}], "toCIDR": [], "toEntities": ["world"]}]}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "", "namespace": "default", "labels": {"app": ""}},
     "spec": {"nodeName": "", "containers": [{"name": "", "image": ""}]}, "status": {"podIP": "", "phase": "Running"}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "", "labels": {"kubernetes.io/metadata.name": ""}}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "", "namespace": "default", "labels": {}},
     "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "selector": {"app": ""},
              "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30000}],
              "sessionAffinity": "None", "externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster"}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
     "metadata": {"name": "", "namespace": "default", "labels": {"kubernetes.io/service-name": ""}},
     "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
     "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": ""}]},
]
VOCABULARY = b"".join(msgspec.msgpack.encode(t) for t in _TEMPLATES)
