"""Which version answers: weighted and sticky routing, shadow traffic, outcome feedback.

``routing`` (the pure router), ``traffic`` (the route table and its admin operations), ``shadow`` (mirroring and
output comparison off the request path), ``feedback`` (the request-id index outcomes join),
``routing_metrics`` (their Prometheus families).
"""
