#!/usr/bin/env python3
"""Tiny admission webhook used by smoke.sh to prove the API server can call a webhook
served on 127.0.0.1 (clientConfig.url). Standard library only.

  /mutate    adds a container named "injected-sidecar" to every Pod it sees
  /validate  denies objects whose metadata.name is "deny-me"

usage: webhook_echo.py PORT CERT KEY
"""
import base64
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        review = json.loads(body)
        req = review["request"]
        resp = {"uid": req["uid"], "allowed": True}
        obj = req.get("object") or {}
        if self.path.startswith("/mutate") and req["kind"]["kind"] == "Pod":
            patch = [{"op": "add", "path": "/spec/containers/-",
                      "value": {"name": "injected-sidecar", "image": "example.invalid/sidecar:1"}}]
            resp["patchType"] = "JSONPatch"
            resp["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        elif self.path.startswith("/validate") and obj.get("metadata", {}).get("name") == "deny-me":
            resp["allowed"] = False
            resp["status"] = {"code": 403, "message": "denied by webhook_echo on 127.0.0.1"}
        out = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                          "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, fmt, *args):
        sys.stderr.write("webhook_echo: " + (fmt % args) + "\n")


def main():
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
