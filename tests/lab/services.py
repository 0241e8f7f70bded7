"""Real services of the lab: the nginx decoy, the HAProxy, nginx-stream or reference gateway, TLS.

Why generated configs: each scenario differs only in a few directives (header on/off, v1/v2,
TLVs, checks, HTTP mode), and the baseline must be the same config minus the header, so both are
rendered from one description. Everything (configs, pid files, logs) lives in a temp dir.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from tests.lab.netlab import DECOY, GATEWAY_FRONT, Lab, LabError, run

STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
TLS_NAME = "gw.lab.example"
BIG_SIZE = 2 * 1024 * 1024


def make_webroot(root: Path) -> Path:
    """Static files the decoy serves: a page, a 32 KB file and a 2 MB one (fixed seed)."""
    if (root / "big.bin").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text("<html><body>decoy</body></html>\n")
    rnd = random.Random(1)
    (root / "docs.bin").write_bytes(rnd.randbytes(32 * 1024))
    (root / "big.bin").write_bytes(rnd.randbytes(BIG_SIZE))
    return root


def _nginx_main(d: Path, name: str) -> str:
    return (
        f"daemon off;\nuser root;\nworker_processes 1;\npid {d}/{name}.pid;\n"
        f"error_log {d}/{name}-error.log info;\nevents {{ worker_connections 256; }}\n"
    )


def start_decoy(
    lab: Lab,
    d: Path,
    webroot: Path,
    proxy_protocol: bool,
    role: str = "decoy",
    addrs: tuple[str, ...] = (DECOY[4], DECOY[6]),
) -> None:
    """nginx http server on the decoy; ``listen ... proxy_protocol`` iff the gateway sends one."""
    pp = " proxy_protocol" if proxy_protocol else ""
    listen = "".join(f"    listen {_hostport(a, 80)}{pp};\n" for a in addrs)
    temps = "".join(
        f"  {k}_temp_path {d}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = _nginx_main(d, role) + (
        "http {\n"
        "  log_format lab '$remote_addr pp=$proxy_protocol_addr \"$request\" $status';\n"
        f"  access_log {d}/{role}-access.log lab;\n{temps}"
        "  default_type application/octet-stream;\n  keepalive_requests 1000;\n"
        "  server {\n"
        f"{listen}    root {webroot};\n"
        '    location /upload { client_max_body_size 50m; return 200 "stored\\n"; }\n'
        '    location = /healthz { return 200 "ok\\n"; }\n'
        "  }\n}\n"
    )
    path = d / f"{role}.conf"
    path.write_text(conf)
    lab.sh(role, "nginx", "-t", "-q", "-e", str(d / f"{role}-t.log"), "-c", str(path))
    lab.spawn(
        role, ["nginx", "-e", str(d / f"{role}-error.log"), "-c", str(path)], d / f"{role}.out"
    )
    lab.wait_listen(role, 80)


def start_nginx_gateway(lab: Lab, d: Path, family: int, proxy_protocol: bool) -> None:
    """nginx stream proxy as gateway: PROXY v1 header coalesced with the first request bytes."""
    conf = (
        f"load_module {STREAM_MODULE};\n"
        + _nginx_main(d, "gw")
        + (
            "stream {\n  server {\n"
            f"    listen {GATEWAY_FRONT[4]}:80;\n    listen [{GATEWAY_FRONT[6]}]:80;\n"
            f"    proxy_pass {_hostport(DECOY[family], 80)};\n"
            f"    proxy_protocol {'on' if proxy_protocol else 'off'};\n"
            # Wait for the client's first bytes before connecting upstream; nginx then sends them in
            # the same segment as the PROXY header. Without it nginx 1.22 sends the header alone.
            "    ssl_preread on;\n"
            "  }\n}\n"
        )
    )
    path = d / "gw-nginx.conf"
    path.write_text(conf)
    lab.sh("gateway", "nginx", "-t", "-q", "-e", str(d / "gw-t.log"), "-c", str(path))
    lab.spawn("gateway", ["nginx", "-e", str(d / "gw-error.log"), "-c", str(path)], d / "gw.out")
    lab.wait_listen("gateway", 80)


def start_haproxy(
    lab: Lab,
    d: Path,
    family: int,
    server_opts: str,
    *,
    mode: str = "tcp",
    tls: Path | None = None,
    httpchk: bool = False,
) -> None:
    """HAProxy gateway; ``server_opts`` carries send-proxy*/check options (empty = baseline).

    With ``tls`` (a dir from make_tls) the frontend terminates TLS and asks for a client cert,
    which is what makes the SSL/CN/cipher/authority TLVs appear in PROXY v2 headers.
    """
    if tls:
        bind = (
            f"bind {GATEWAY_FRONT[4]}:443 ssl crt {tls}/gw.pem ca-file {tls}/ca.pem verify optional"
        )
        port = 443
    else:
        bind = f"bind {GATEWAY_FRONT[4]}:80\n  bind {GATEWAY_FRONT[6]}:80"
        port = 80
    conf = (
        f"global\n  pidfile {d}/haproxy.pid\n  log stdout format raw local0 info\n"
        f"defaults\n  mode {mode}\n  log global\n  option {mode}log\n"
        "  timeout connect 10s\n  timeout client 30s\n  timeout server 30s\n"
        f"frontend fe\n  {bind}\n"
        "  unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt\n"
        "  default_backend be\n"
        "backend be\n"
        + ("  option httpchk GET /healthz\n" if httpchk else "")
        + f"  server decoy {_hostport(DECOY[family], 80)} {server_opts}\n"
    )
    path = d / "haproxy.cfg"
    path.write_text(conf)
    run(["haproxy", "-c", "-q", "-f", str(path)])
    lab.spawn("gateway", ["haproxy", "-db", "-f", str(path)], d / "haproxy.log")
    lab.wait_listen("gateway", port)


def make_tls(d: Path) -> Path:
    """A throwaway CA, a gateway cert for TLS_NAME and a client cert (CN=attacker-client)."""
    if (d / "gw.pem").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*a: str) -> None:
        try:
            subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
        except subprocess.CalledProcessError as e:
            raise LabError(f"openssl {a[0]}: {e.stderr.decode()}") from e

    ossl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "3650",
        "-subj",
        "/CN=lab-ca",
    )
    for name, cn in (("gw", TLS_NAME), ("client", "attacker-client")):
        ossl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={cn}",
        )
        (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n")
        ossl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "3650",
            "-extfile",
            f"{name}.ext",
        )
    (d / "gw.pem").write_text((d / "gw.crt").read_text() + (d / "gw.key").read_text())
    return d


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def start_reference_gateway(
    lab: Lab, d: Path, role: str, listen: str, backend: str, *args: str, name: str = "refgw"
) -> Path:
    """``suricata-normalizer reference-gateway`` in ``role``; returns its --stats-json path.

    ``listen``/``backend`` are ADDR:PORT (IPv6 in brackets); ``args`` are further options,
    e.g. ``--header custom --coalesce`` or ``--accept custom --header proxy-v1`` (a receiver).
    The counters are written when the lab stops it (SIGTERM); ``--grace 1`` keeps that within
    netlab.stop's 5 s.
    """
    stats = d / f"{name}-stats.json"
    argv = [sys.executable, "-m", "normalizer.cli", "reference-gateway", "--listen", listen]
    argv += ["--backend", backend, "--grace", "1", "--stats-json", str(stats), "-v", *args]
    lab.spawn(role, argv, d / f"{name}.log")
    host, _, port = listen.rpartition(":")
    deadline = time.monotonic() + 10
    while not lab.sh(role, "ss", "-Hltn", f"src {host}:{port}").strip():
        if time.monotonic() > deadline:
            raise LabError(f"reference gateway not listening on {listen} in {role}: {d}/{name}.log")
        time.sleep(0.05)
    return stats


def start_custom_decoy(
    lab: Lab, d: Path, webroot: Path, role: str = "decoy", addr: str = DECOY[4], port: int = 80
) -> Path:
    """A decoy that understands our custom header: a reference-gateway receiver on addr:port
    (``--accept custom``, which closes connections whose header is malformed) in front of the
    decoy nginx on 127.0.0.1:80, to which it passes the client as PROXY v1, so nginx's access
    log (``pp=``) names the attacker. Returns the receiver's --stats-json path."""
    start_decoy(lab, d, webroot, True, role=role, addrs=("127.0.0.1",))
    return start_reference_gateway(
        lab,
        d,
        role,
        _hostport(addr, port),
        "127.0.0.1:80",
        "--accept",
        "custom",
        "--header",
        "proxy-v1",
        name=f"{role}-receiver",
    )
