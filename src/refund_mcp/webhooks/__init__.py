"""Processor webhooks: verify the signature over the raw body, parse into events, apply through the service.

    events.py      processor-neutral events (RefundEvent, PaymentEvent, IgnoredEvent)
    errors.py      why a delivery is refused, and the HTTP status each reason gets
    stripe.py, paypal.py, adyen.py, square.py
                   verify_<processor>(raw_body, headers, secret, now) and parse_<processor>(raw_body)
    ucs.py         UCS connectors: the raw delivery is verified and parsed by EventService.HandleEvent
    routes.py      webhook_routes(app): POST /webhooks/{stripe,paypal,adyen,square}[/{label}] and
                   /webhooks/ucs/{account}; events are recorded under the account they arrived for

The service applies events in service/events.py (replays, status rules, refunds made elsewhere).
"""
