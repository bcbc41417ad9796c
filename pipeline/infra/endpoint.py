"""A rendezvous endpoint as ``host:port``: read by the params schema (``pipeline.config``) when it
checks ``train.rendezvous``, and by the launcher (``pipeline.infra.launch``) when it starts a job. Its
own module so that the schema does not import the launcher."""
from __future__ import annotations

import re

DEFAULT_PORT = 29400  # torchrun's c10d default


def parse_endpoint(value: str, key: str = "") -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; a bare host gets port 29400) as (host, port), refused naming ``key``."""
    prefix = f"{key}: " if key else ""
    match = re.fullmatch(r"\[(?P<v6>[0-9A-Fa-f:.]+)\](?::(?P<p6>\d+))?|(?P<host>[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?",
                         value.strip())
    if not match:
        raise ValueError(f"{prefix}{value!r} is not host:port")
    host = match["v6"] or match["host"]
    port = int(match["p6"] or match["port"] or DEFAULT_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"{prefix}port {port} of {value!r} is out of range 1-65535")
    return host, port
