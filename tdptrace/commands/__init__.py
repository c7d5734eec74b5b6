"""One module per command, each exposing register(app); the click classes every command is built with."""
from tdptrace.options import Command, Group

__all__ = ["Command", "Group"]
