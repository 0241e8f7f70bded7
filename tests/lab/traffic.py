"""The fixed "attack": curl requests from the attacker namespace through the gateway.

Why this shape: the first request of every connection is the one a PROXY header hides from
Suricata, while later keep-alive requests on the same connection are still parsed. So one curl
run sends several attacks on ONE keep-alive connection and the others use a connection each.
EXPECTED_SIDS says which rule in suricata/rules/decoy.rules each request must trigger.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.lab.netlab import GATEWAY_FRONT, Lab
from tests.lab.services import TLS_NAME

UA = "Mozilla/5.0 (X11; Linux x86_64) lab-client"
SHELLSHOCK = "() { :; }; /bin/bash -c 'cat /etc/passwd'"
WEBSHELL = b"<?php system($_GET['c']); ?>\n"


@dataclass(frozen=True)
class Request:
    """One HTTP request: path, curl options, and the sids it must make Suricata raise."""

    path: str
    sids: tuple[int, ...] = ()
    ua: str = UA
    post_size: int = 0  # > 0: POST to the path with a body of that many bytes (webshell first)


@dataclass(frozen=True)
class Connection:
    """Requests curl sends on one keep-alive connection, in order."""

    requests: tuple[Request, ...]


KEEPALIVE = Connection(
    (
        Request(
            "/products.php?id=1%27%20UNION%20SELECT%20username,password%20FROM%20users--",
            (9100001,),
        ),
        Request("/search?q=%3Cscript%3Ealert(document.cookie)%3C/script%3E", (9100006,)),
        Request("/.env", (9100007,)),
        # Last: nginx answers a path above its root with 400 and closes the connection.
        Request("/static/../../../../etc/passwd", (9100002,)),
    )
)
SINGLES = (
    Connection((Request("/cgi-bin/status", (9100003,), ua=SHELLSHOCK),)),
    Connection((Request("/cgi-bin/ping.cgi?host=127.0.0.1;cat%20/etc/passwd", (9100004,)),)),
    Connection(
        (Request("/index.php?id=1", (9100005,), ua="sqlmap/1.7.2#stable (https://sqlmap.org)"),)
    ),
    Connection((Request("/wp-login.php", (9100008, 9100010), ua="Mozilla/5.00 (Nikto/2.1.6)"),)),
    Connection((Request("/upload", (9100009,), post_size=2048),)),
    Connection((Request("/index.html"), Request("/docs.bin"))),  # benign
)
BULK = (  # loss scenarios: enough bytes both ways that random drops hit data segments
    Connection((Request("/big.bin"),)),
    Connection(tuple(Request("/upload", (9100009,), post_size=400_000) for _ in range(3))),
)


def connections(bulk: bool) -> tuple[Connection, ...]:
    return (KEEPALIVE, *SINGLES, *(BULK if bulk else ()))


def expected_alerts(bulk: bool) -> Counter[int]:
    """sid -> count Suricata must raise for one run of the traffic."""
    return Counter(s for c in connections(bulk) for r in c.requests for s in r.sids)


def run_traffic(
    lab: Lab,
    d: Path,
    family: int = 4,
    tls: Path | None = None,
    bulk: bool = False,
    url: str | None = None,
) -> None:
    """Run every connection's curl, one after the other, so captures are deterministic.

    ``url`` (e.g. ``http://198.51.100.1:81``) targets another gateway than the default one.
    """
    if tls:
        base = f"https://{TLS_NAME}"
        opts = [
            "--resolve",
            f"{TLS_NAME}:443:{GATEWAY_FRONT[4]}",
            "--cacert",
            f"{tls}/ca.pem",
            "--cert",
            f"{tls}/client.crt",
            "--key",
            f"{tls}/client.key",
        ]
    else:
        host = GATEWAY_FRONT[family]
        base = f"http://[{host}]" if family == 6 else f"http://{host}"
        opts = []
    if url is not None:
        base, opts = url.rstrip("/"), []
    log: list[str] = []
    for i, conn in enumerate(connections(bulk)):
        argv = ["curl", "-sS"]
        for j, req in enumerate(conn.requests):
            # --next keeps curl's connection cache, so these requests share one connection.
            argv += ["--next"] if j else []
            argv += [
                "--path-as-is",
                "--max-time",
                "60",
                *opts,
                "-A",
                req.ua,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} connects=%{num_connects} %{url}\\n",
            ]
            if req.post_size:
                part = d / f"body{i}-{j}.bin"
                part.write_bytes((WEBSHELL + b"A" * req.post_size)[: req.post_size])
                argv += ["--data-binary", f"@{part}"]
            argv.append(base + req.path)
        # curl exits 0 on 404/400 (no --fail); non-zero means the lab itself is broken.
        log.append(lab.sh("attacker", *argv, timeout=120))
    with (d / "curl.log").open("a") as out:
        out.write("".join(log))
