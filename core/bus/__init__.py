"""The ZeroMQ event bus: the proxy, the request broker, the client plugins use, the event vocabulary."""
