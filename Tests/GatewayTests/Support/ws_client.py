"""A real WebSocket client for Gatehouse's live tests (the `websockets` library).

Usage: ws_client.py URL [Header: value ...]. Opens the connection with those headers, sends text and binary
messages up to 1 MiB and checks each echo, asks `whoami`, closes. Prints one JSON object:
{"status": 101, "echoed": n, "mismatches": [...], "seen": {headers the upstream saw}}, or, when the handshake
is refused, {"status": <code>, "headers": {...}, "body": "..."}.
"""
import asyncio
import json
import os
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


async def main():
    url = sys.argv[1]
    headers = [tuple(h.split(": ", 1)) for h in sys.argv[2:]]
    messages = [
        "hello",
        "\u00e9t\u00e9 \u2603 " * 1000,
        os.urandom(1000),
        "t" * (1 << 20),
        os.urandom(1 << 20),
        b"",
        "",
    ]
    result = {}
    try:
        async with connect(
            url, additional_headers=headers, max_size=4 * 1024 * 1024, ping_interval=None, compression=None,
            open_timeout=10,
        ) as ws:
            result["status"] = 101
            result["mismatches"] = []
            echoed = 0
            for i, m in enumerate(messages):
                await ws.send(m)
                got = await asyncio.wait_for(ws.recv(), 20)
                if got == m:
                    echoed += 1
                else:
                    result["mismatches"].append(i)
            result["echoed"] = echoed
            await ws.send("whoami")
            result["seen"] = json.loads(await asyncio.wait_for(ws.recv(), 20))
    except InvalidStatus as e:
        result = {
            "status": e.response.status_code,
            "headers": dict(e.response.headers.raw_items()),
            "body": (e.response.body or b"").decode("utf-8", "replace"),
        }
    print(json.dumps(result))


asyncio.run(main())
