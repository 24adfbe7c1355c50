#!/usr/bin/env python3
"""A sample upstream for trying Gatehouse: answers every request with a JSON echo of what it received.

Usage: sample_upstream.py [PORT ...]   (default 9001)
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        doc = {
            "upstream_port": self.server.server_address[1],
            "method": self.command,
            "path": self.path,
            "headers": {k: v for k, v in self.headers.items()},
            "body_bytes": len(body),
        }
        out = (json.dumps(doc, indent=2) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, fmt, *args):
        sys.stderr.write("sample-upstream: " + (fmt % args) + "\n")


def main():
    ports = [int(p) for p in sys.argv[1:]] or [9001]
    servers = [ThreadingHTTPServer(("127.0.0.1", p), Echo) for p in ports]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("sample upstream on " + ", ".join(f"127.0.0.1:{p}" for p in ports), flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
