"""Serve one processor fake over real HTTP, its state living in this process.

    python -m tests.fakes.serve stripe --port 12111     (--port 0, the default, picks a free one)
    python -m tests.fakes.serve paypal --port 12112 --client-id ID --client-secret SECRET
    python -m tests.fakes.serve adyen  --port 12113 --api-key KEY --merchant-account ACCOUNT
    python -m tests.fakes.serve square --port 12114 --access-token TOKEN

Point refund-mcp at it (e.g. STRIPE_API_BASE=http://127.0.0.1:12111, ADYEN_API_BASE=
http://127.0.0.1:12113/v71) and drive it through its control API (see tests/fakes/common.py):

    curl -X POST localhost:12111/_fake/payments -d '{"amount_minor": 5000, "currency": "USD"}'
    curl -X POST localhost:12111/_fake/faults -d '{"next_503": 2}'
    curl -X POST localhost:12111/_fake/faults -d '{"next_timeout_after_commit": 1}'
    curl localhost:12111/_fake/state

The first line on stdout is "<processor> fake listening on http://HOST:PORT" once the port accepts
connections. A request stalled by `next_timeout_after_commit` waits until POST /_fake/release
(or shutdown).
"""

from __future__ import annotations

import argparse
import socket
import sys

import uvicorn

from tests.fakes.adyen import DEFAULT_API_KEY as ADYEN_KEY
from tests.fakes.adyen import DEFAULT_MERCHANT_ACCOUNT, AdyenFake
from tests.fakes.common import FakeProcessor
from tests.fakes.paypal import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, PayPalFake
from tests.fakes.square import DEFAULT_ACCESS_TOKEN, SquareFake
from tests.fakes.stripe import DEFAULT_API_KEY as STRIPE_KEY
from tests.fakes.stripe import StripeFake


def build_fake(args: argparse.Namespace) -> FakeProcessor:
    if args.processor == "stripe":
        return StripeFake(api_key=args.api_key or STRIPE_KEY)
    if args.processor == "paypal":
        fake = PayPalFake(client_id=args.client_id, client_secret=args.client_secret)
        if args.token_ttl is not None:
            fake.token_ttl = args.token_ttl
        return fake
    if args.processor == "adyen":
        return AdyenFake(api_key=args.api_key or ADYEN_KEY, merchant_account=args.merchant_account)
    return SquareFake(access_token=args.access_token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.serve", description=__doc__.splitlines()[0])
    parser.add_argument("processor", choices=["stripe", "paypal", "adyen", "square"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--api-key", help="Stripe secret key / Adyen X-API-Key the fake accepts")
    parser.add_argument("--merchant-account", default=DEFAULT_MERCHANT_ACCOUNT)
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    parser.add_argument("--token-ttl", type=int, help="PayPal: expires_in of issued tokens, in seconds")
    parser.add_argument("--access-token", default=DEFAULT_ACCESS_TOKEN)
    args = parser.parse_args(argv)
    fake = build_fake(args)
    # Bind and listen before announcing the address, so a caller that reads the line below can
    # connect at once (the kernel queues connections until uvicorn accepts them): no polling.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    print(f"{args.processor} fake listening on http://{host}:{port}", flush=True)
    # Stalled requests never finish on their own: do not wait long for them on shutdown.
    config = uvicorn.Config(fake.app, log_level="warning", timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
