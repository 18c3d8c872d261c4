"""Peers served side by side with Surge: the gRPC floor and MLServer."""
