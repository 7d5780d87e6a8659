"""gRPC between Python processes of the platform: a client channel on the HTTP/2 core (channel.py)."""
