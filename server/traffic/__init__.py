"""Which version answers: weighted and sticky routing, shadow traffic, outcome feedback.

``routing`` (the pure router), ``traffic`` (the route table and its admin operations), ``shadow`` (mirroring and
output comparison off the request path), ``feedback`` (the request-id index outcomes join),
``routing_metrics`` (their Prometheus families), ``rollout`` and ``rollout_plan`` (progressive rollouts and
their gates), ``ab`` (the statistics that compare versions, for the gates and ``surge ab``).
"""
