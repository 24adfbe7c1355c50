"""A real WebSocket upstream for Gatehouse's live tests (the `websockets` library).

Usage: ws_upstream.py [port [certfile keyfile]] (with a certificate: wss, TLS only). Prints `listening <port>`, then one line per event on stdout:
  `request <path> <headers as JSON>` for every HTTP request that reached it (handshake or not),
  `open <path>`, `close <path>`, and `sent <total bytes>` while flooding.
Paths: /.../echo echoes every message (and answers `whoami` with the handshake's headers as JSON);
/.../flood sends 64 KiB binary messages as fast as the connection takes them; /.../close closes at once;
any other path holds the connection open until the peer closes it.
"""
import asyncio
import json
import ssl
import sys

from websockets.asyncio.server import serve


def say(line):
    print(line, flush=True)


def process_request(connection, request):
    say("request %s %s" % (request.path, json.dumps(dict(request.headers.raw_items()))))
    return None


async def handler(ws):
    path = ws.request.path
    say("open %s" % path)
    try:
        if path.endswith("/echo"):
            async for message in ws:
                if message == "whoami":
                    await ws.send(json.dumps(dict(ws.request.headers.raw_items())))
                else:
                    await ws.send(message)
        elif path.endswith("/flood"):
            chunk = b"x" * 65536
            sent = 0
            while True:
                await ws.send(chunk)
                sent += len(chunk)
                say("sent %d" % sent)
        elif path.endswith("/close"):
            await ws.close()
        else:
            await ws.wait_closed()
    except Exception:
        pass
    finally:
        say("close %s" % path)


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    tls = None
    if len(sys.argv) > 3:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sys.argv[2], sys.argv[3])
    async with serve(
        handler, "127.0.0.1", port, process_request=process_request, max_size=4 * 1024 * 1024,
        ping_interval=None, compression=None, ssl=tls,
    ) as server:
        say("listening %d" % server.sockets[0].getsockname()[1])
        await asyncio.Future()


asyncio.run(main())
